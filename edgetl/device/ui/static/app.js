// The line's page: polls the agent (no stream held open), draws nothing itself: pictures come drawn by
// edgetl.annotate on the device. Every text goes through textContent, never innerHTML: labels, file
// names and messages from the device are shown as text, not parsed as markup.
"use strict";

const state = { csrf: null, role: null, liveFps: 5, latest: null, shownId: null, liveUrl: null,
                liveBusy: false, model: null, lastRejects: "", lastCaptures: "" };
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function fmt(x, digits = 3) {
  if (x === null || x === undefined) return "–";
  if (typeof x === "number") return Number.isInteger(x) ? String(x) : x.toFixed(digits);
  return String(x);
}

function pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + " %"; }
function when(t) { return new Date(t * 1000).toLocaleTimeString(); }

async function api(path, options = {}) {
  const init = { credentials: "same-origin", cache: "no-store", ...options };
  if (init.method && init.method !== "GET") {
    init.headers = { "Content-Type": "application/json", "X-CSRF-Token": state.csrf, ...(init.headers || {}) };
  }
  const response = await fetch(path, init);
  if (response.status === 401) { window.location.assign("/ui/login"); throw new Error("not logged in"); }
  return response;
}

function table(node, rows) {
  node.replaceChildren(...rows.map(([key, value, cls]) => {
    const tr = el("tr");
    tr.append(el("th", key), el("td", value, cls));
    return tr;
  }));
}

// -- state: counters, health, model card, notices (once a second) ---------------------------------
async function pollState() {
  try {
    const doc = await (await api("/ui/api/state")).json();
    render(doc);
  } catch (err) { /* a missed poll: the next one retries */ }
  setTimeout(pollState, 1000);
}

function render(doc) {
  state.latest = doc.latest;
  if (doc.live_fps) state.liveFps = doc.live_fps;
  state.model = doc.model;
  const notices = $("notices");
  notices.replaceChildren(...doc.notices.map((n) => el("li", n.text, n.code)));
  const c = doc.counters, p = doc.pipeline;
  table($("counters"), [
    ["inspected", fmt(c.inspected)], ["rejected", fmt(c.rejected)],
    ["reject rate, last minute", pct(c.last_minute.rate) + "  (" + c.last_minute.rejected + " of " + c.last_minute.inspected + ")"],
    ["reject rate, last hour", pct(c.last_hour.rate) + "  (" + c.last_hour.rejected + " of " + c.last_hour.inspected + ")"],
    ["lost frames", fmt(c.lost)], ["errors", fmt(c.errors)],
  ]);
  table($("health"), [
    ["source", p.source || "–"], ["state", p.state], ["fps", fmt(p.fps, 1)],
    ["latency p50 / p99", fmt(c.latency_ms.p50, 1) + " / " + fmt(c.latency_ms.p99, 1) + " ms"],
    ["dropped / lost", fmt(p.dropped) + " / " + fmt(p.lost)], ["reconnects", fmt(p.reconnects)],
    ["last error", p.error || "–"],
  ]);
  const m = doc.model;
  $("model-name").textContent = m ? m.model_version : "no model";
  if (m) {
    const gate = m.gate_attempt;
    const ref = m.reference;
    table($("card"), [
      ["name", m.name], ["model_version", m.model_version], ["bundle_version", fmt(m.bundle_version)],
      ["digest", m.digest ? m.digest.slice(0, 16) + "…" : "–"], ["target", m.target + " " + m.precision],
      ["task", m.task + ": " + m.labels.join(", ")], ["threshold", fmt(m.threshold)],
      ["export gate", gate ? (gate.passed ? "passed" : "failed") + (gate.agreement !== null && gate.agreement !== undefined ? ", agreement " + fmt(gate.agreement) : "") + (gate.drop_points !== null && gate.drop_points !== undefined ? ", drop " + fmt(gate.drop_points, 2) + " points" : "") : "–"],
      ["reference check here", ref ? (ref.passed ? "passed" : "FAILED") + " (" + ref.n + " images, max diff " + fmt(ref.max_abs_diff, 5) + ")" : "–", ref && !ref.passed ? "reject" : ""],
    ]);
    fillClasses(m.labels);
    if (document.activeElement !== $("threshold-range") && document.activeElement !== $("threshold-value")
        && !state.thresholdTouched && m.threshold !== null) {
      $("threshold-range").value = m.threshold; $("threshold-value").value = m.threshold;
    }
  } else {
    table($("card"), [["model", "none installed"]]);
  }
  const usage = doc.captures;
  $("capture-usage").textContent = usage.captures + " captures, " + (usage.bytes / 1048576).toFixed(1) + " of "
    + (usage.max_bytes / 1048576).toFixed(0) + " MiB";
}

function fillClasses(labels) {
  const select = $("mark-class");
  const key = labels.join("\u0000");
  if (select.dataset.key === key) return;
  select.dataset.key = key;
  select.replaceChildren(...labels.map((label) => { const o = el("option", label); o.value = label; return o; }));
}

// -- the live picture (at most liveFps a second, one request at a time) -----------------------------
async function pollLive() {
  const started = performance.now();
  if (!document.hidden && !state.liveBusy) {
    state.liveBusy = true;
    try {
      const response = await api("/ui/api/live.jpg");
      if (response.ok) {
        const id = Number(response.headers.get("X-Frame-Id"));
        const blob = await response.blob();
        if (id !== state.shownId) {
          const url = URL.createObjectURL(blob);
          $("live").src = url;
          if (state.liveUrl) URL.revokeObjectURL(state.liveUrl);
          state.liveUrl = url;
          state.shownId = id;
          $("live").dataset.frameId = String(id);
          const l = JSON.parse(decodeURIComponent(response.headers.get("X-Frame") || "%7B%7D"));
          $("live-caption").textContent = `${when(l.time)} · frame ${l.frame} · ${l.source} · ${l.label} · `
            + `score ${fmt(l.score)} · threshold ${fmt(l.threshold)}`;
        }
      }
    } catch (err) { /* retried */ }
    state.liveBusy = false;
  }
  setTimeout(pollLive, Math.max(10, 1000 / state.liveFps - (performance.now() - started)));  // liveFps a second
}

// -- rejects gallery, capture list --------------------------------------------------------------------
async function pollRejects() {
  try {
    const doc = await (await api("/ui/api/rejects")).json();
    const key = doc.rejects.map((r) => r.id).join(",");
    if (key !== state.lastRejects) {
      state.lastRejects = key;
      $("rejects").replaceChildren(...doc.rejects.map((r) => {
        const fig = el("figure");
        const img = el("img");
        img.src = "/ui/api/frames/" + encodeURIComponent(r.id) + ".jpg";
        img.alt = "reject " + r.frame;
        fig.dataset.id = String(r.id);
        fig.append(img, el("figcaption", `${when(r.time)} · frame ${r.frame} · ${r.label} ${fmt(r.score)}`));
        fig.addEventListener("click", () => openFull(r));
        return fig;
      }));
    }
  } catch (err) { /* retried */ }
  setTimeout(pollRejects, 2000);
}

function openFull(r) {
  $("viewer-image").src = "/ui/api/frames/" + encodeURIComponent(r.id) + ".jpg?full=true";
  $("viewer-caption").textContent = `${when(r.time)} · frame ${r.frame} · ${r.source} · ${r.label} · score ${fmt(r.score)}`;
  $("viewer").showModal();
}

async function pollCaptures() {
  try {
    const doc = await (await api("/ui/api/captures")).json();
    const key = doc.captures.map((c) => c.id + (c.mark || "") + (c.label || "")).join(",");
    if (key !== state.lastCaptures) {
      state.lastCaptures = key;
      const head = el("tr");
      ["time", "frame", "source", "predicted", "mark", "label", "why kept"].forEach((h) => head.append(el("th", h)));
      $("captures").replaceChildren(head, ...doc.captures.slice(0, 20).map((c) => {
        const tr = el("tr");
        tr.dataset.id = c.id;
        [when(c.time), c.frame, c.source, c.predicted, c.mark || "–", c.label || "unlabelled", c.reason]
          .forEach((v) => tr.append(el("td", v)));
        return tr;
      }));
    }
  } catch (err) { /* retried */ }
  setTimeout(pollCaptures, 3000);
}

// -- engineer's tools (admin) --------------------------------------------------------------------------
async function mark(kind, label) {
  const id = state.shownId;
  if (!id) return;
  const body = { id, mark: kind };
  if (label) body.label = label;
  const response = await api("/ui/api/mark", { method: "POST", body: JSON.stringify(body) });
  const doc = await response.json();
  $("mark-result").textContent = response.ok ? `marked ${doc.mark} (${doc.label || "unlabelled"}), frame ${doc.frame}`
                                             : doc.error;
  state.lastCaptures = "";
}

async function preview() {
  const t = Number($("threshold-value").value);
  const response = await api("/ui/api/preview?threshold=" + encodeURIComponent(t));
  const doc = await response.json();
  $("threshold-effect").textContent = response.ok
    ? `at ${fmt(t)}: ${doc.flips} of the last ${doc.n} frames would flip (${doc.to_reject} more rejected, `
      + `${doc.to_accept} more accepted; rejected ${doc.rejected_now} → ${doc.rejected_then})`
    : doc.error;
}

async function applyThreshold() {
  const t = Number($("threshold-value").value);
  const response = await api("/ui/api/threshold", { method: "POST", body: JSON.stringify({ threshold: t }) });
  const doc = await response.json();
  $("threshold-effect").textContent = response.ok ? `threshold ${fmt(doc.previous_threshold)} → ${fmt(doc.threshold)} applied`
                                                  : doc.error;
  state.thresholdTouched = false;
}

async function start() {
  const session = await (await api("/ui/api/session")).json();
  state.csrf = session.csrf;
  state.role = session.role;
  $("role").textContent = session.role;
  if (session.role !== "admin") document.querySelectorAll(".admin").forEach((n) => { n.hidden = true; });
  $("logout").addEventListener("click", async () => {
    await api("/ui/logout", { method: "POST", body: "{}" });
    window.location.assign("/ui/login");
  });
  $("mark-false-reject").addEventListener("click", () => mark("false_reject"));
  $("mark-missed-defect").addEventListener("click", () => mark("missed_defect"));
  $("mark-label").addEventListener("click", () => mark("label", $("mark-class").value));
  $("threshold-range").addEventListener("input", () => {
    $("threshold-value").value = $("threshold-range").value; state.thresholdTouched = true;
  });
  $("threshold-value").addEventListener("input", () => {
    $("threshold-range").value = $("threshold-value").value; state.thresholdTouched = true;
  });
  $("threshold-preview").addEventListener("click", preview);
  $("threshold-apply").addEventListener("click", applyThreshold);
  pollState();
  pollLive();
  pollRejects();
  pollCaptures();
}

document.addEventListener("DOMContentLoaded", start);
