"""Device half of the demo: agent on 127.0.0.1 → deploy → replay test images → summary → stop.

Every step is what a user would do: ``edgetl agent serve`` in its own process
(a temporary state dir and token), ``edgetl deploy`` (which prints what the
device verified), the agent's pipeline API replaying a held-out image folder
into a JSON-lines sink, then a summary of the results. The agent is stopped
at the end, whatever happens, and nothing is left running.

    python examples/device_demo.py --bundle demo-out/model.edgetl --trust demo-out/demo.pub \\
        --images data/textures/test --out demo-out/device
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
EDGETL = [sys.executable, "-m", "edgetl"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_agent(state: Path, token_file: Path, trust: Path, port: int, log: Path,
                data_roots: list[Path]) -> subprocess.Popen:
    """``edgetl agent serve`` on 127.0.0.1; the pipeline may read and write only under ``data_roots``."""
    cmd = [*EDGETL, "agent", "serve", "--state-dir", str(state), "--host", "127.0.0.1", "--port", str(port),
           "--token-file", str(token_file), "--trust", str(trust), "--log-level", "warning"]
    for root in data_roots:
        cmd += ["--data-root", str(root)]
    print("$ edgetl " + " ".join(cmd[3:]), flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"device demo: the agent exited ({proc.returncode}); log: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("device demo: the agent did not come up within 60 s")


def stop_agent(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    how = "SIGTERM, graceful" if proc.returncode in (0, -signal.SIGTERM) else f"exit status {proc.returncode}"
    print(f"agent stopped ({how})", flush=True)


def summarise(lines: list[dict], labels: list[str], reject: frozenset[str] = frozenset()) -> dict:
    """Counts per predicted label; where the image's folder names its true class, the confusion.

    Accuracy and recall per class are reported only when every folder is one
    of the model's ``labels`` (an anomaly model says ``anomaly`` of a
    ``defect`` folder: that is no error). ``reject`` names the labels and
    folders that mean "take the part off the line" (ELPV's p067 and p100):
    the summary then also scores that keep/reject decision, which is what a
    line acts on when the model has more classes than the line has outcomes.
    """
    truth = [(Path(r["source"]).parts[0], r["label"]) for r in lines if len(Path(r["source"]).parts) > 1]
    doc = {"n": len(lines), "predicted": dict(collections.Counter(r["label"] for r in lines)),
           "mean_latency_ms": sum(r["latency_ms"] for r in lines) / max(1, len(lines)),
           "models": sorted({r["model"] for r in lines})}
    if not truth:
        return doc
    confusion: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for t, p in truth:
        confusion[t][p] += 1
    doc["confusion"] = {t: dict(sorted(c.items())) for t, c in sorted(confusion.items())}
    if set(confusion) <= set(labels):
        doc["accuracy"] = sum(t == p for t, p in truth) / len(truth)
        doc["recall_per_class"] = {t: c[t] / sum(c.values()) for t, c in sorted(confusion.items())}
    if reject:
        doc["reject"] = reject_decision(truth, reject)
    return doc


def reject_decision(truth: list[tuple[str, str]], reject: frozenset[str]) -> dict:
    """The line's decision: a part is rejected when its predicted label is in ``reject``."""
    pairs = [(t in reject, p in reject) for t, p in truth]
    defective = sum(t for t, _ in pairs)
    good = len(pairs) - defective
    caught = sum(t and p for t, p in pairs)
    false_rejects = sum(p and not t for t, p in pairs)
    return {"labels": sorted(reject), "defective": defective, "rejected_defective": caught,
            "recall": caught / defective if defective else None, "good": good, "rejected_good": false_rejects,
            "false_reject_rate": false_rejects / good if good else None,
            "accuracy": sum(t == p for t, p in pairs) / len(pairs)}


def summary_text(summary: dict, labels: list[str]) -> str:
    """The replay as a plant engineer reads it: a confusion table, recall per class, the reject decision."""
    out = [f"{summary['n']} images, {summary['mean_latency_ms']:.1f} ms mean latency, model "
           + ", ".join(summary["models"])]
    if "confusion" not in summary:
        return "\n".join(out + ["predicted: " + json.dumps(summary["predicted"])])
    width = max(6, *(len(x) for x in labels))
    recall = summary.get("recall_per_class", {})
    out.append(f"{'true class':<12}{'images':>7}   predicted as:" + "".join(f"{x:>{width + 1}}" for x in labels)
               + f"{'recall':>9}")
    for true, row in summary["confusion"].items():
        out.append(f"{true:<12}{sum(row.values()):>7}" + " " * 16 + "".join(f"{row.get(x, 0):>{width + 1}}"
                                                                          for x in labels)
                   + (f"{recall[true]:>9.1%}" if true in recall else f"{'-':>9}"))
    if "accuracy" in summary:
        out.append(f"accuracy {summary['accuracy']:.1%}")
    if (rej := summary.get("reject")) is not None:
        said = " or ".join(x for x in rej["labels"] if x in labels)
        parts = "/".join(x for x in rej["labels"] if x in summary["confusion"])
        out.append(f"the line's decision, reject when the model says {said}: "
                   f"{_share(rej['rejected_defective'], rej['defective'])} {parts} parts rejected (recall), "
                   f"{_share(rej['rejected_good'], rej['good'])} other parts rejected (false rejects); "
                   f"keep/reject right for {rej['accuracy']:.1%} of the parts")
    return "\n".join(out)


ACTIONS = ("keep", "second-look", "reject")


def parse_route(text: str) -> dict[str, str]:
    """``p000=keep,p033=second-look,...`` -> {label: action}; an unknown action stops the demo."""
    route = {}
    for item in filter(None, text.split(",")):
        label, _, action = item.partition("=")
        if action not in ACTIONS:
            sys.exit(f"device demo: --route {item}: expected LABEL=ACTION with ACTION one of {', '.join(ACTIONS)}")
        route[label] = action
    return route


def routing_text(lines: list[dict], route: dict[str, str]) -> str:
    """Per true grade (image folder), how many parts the line kept, sent to a second look or rejected.

    The action is the route of the label the agent returned, i.e. of its
    decision under the bundle's operating point; labels without a route are kept.
    """
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in lines:
        parts = Path(r["source"]).parts
        table[parts[0] if len(parts) > 1 else "(all)"][route.get(r["label"], "keep")] += 1
    out = ["the line's routing, " + ", ".join(f"{label} -> {action}" for label, action in route.items()) + ":",
           f"{'true class':<12}{'images':>7}" + "".join(f"{a:>13}" for a in ACTIONS)]
    for true, row in sorted(table.items()):
        n = sum(row.values())
        out.append(f"{true:<12}{n:>7}" + "".join(f"{row[a]:>7} {row[a] / n:>5.0%}" for a in ACTIONS))
    return "\n".join(out)


def _share(k: int, n: int) -> str:
    return f"{k} of the {n}" + (f" ({k / n:.1%})" if n else "")


def heatmap(client: httpx.Client, image: Path, out: Path) -> None:
    """One image through ``POST /v1/predict?heatmap=true``; the base64 PNG map saved to ``out``."""
    import base64

    print(f"\nPOST /v1/predict?heatmap=true  ({image})", flush=True)
    response = client.post("/v1/predict?heatmap=true", content=image.read_bytes(),
                           headers={"Content-Type": "image/png" if image.suffix == ".png" else "image/jpeg"})
    if response.status_code != 200:
        sys.exit(f"device demo: heat map refused: {response.json().get('error')}")
    doc = response.json()
    out.write_bytes(base64.b64decode(doc.pop("heatmap_png")))
    print(f"{json.dumps(doc)}\nheat map: {out}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--trust", type=Path, required=True, help="public key the bundle was signed with")
    parser.add_argument("--images", type=Path, required=True, help="held-out images (class folders)")
    parser.add_argument("--out", type=Path, default=ROOT / "demo-out" / "device")
    parser.add_argument("--heatmap", type=Path, help="anomaly models: POST this image with ?heatmap=true, "
                                                      "save the map as OUT/heatmap.png")
    parser.add_argument("--reject", default="", metavar="NAME,...",
                        help="labels (and image folders) that mean 'take the part off the line': also score that "
                             "keep/reject decision")
    parser.add_argument("--route", default="", metavar="LABEL=ACTION,...",
                        help="what the line does with each label (keep, second-look, reject): print the routing "
                             "of the replayed parts per true class")
    args = parser.parse_args()
    reject = frozenset(x for x in args.reject.split(",") if x)
    route = parse_route(args.route)
    # the labels as a user reads them: the command line, not edgetl's private bundle reader
    inspect = subprocess.run([*EDGETL, "bundle", "inspect", "--json", str(args.bundle)], capture_output=True,
                             text=True)
    if inspect.returncode:
        sys.exit(f"device demo: edgetl bundle inspect {args.bundle} failed: {inspect.stderr.strip()}")
    labels = list(json.loads(inspect.stdout)["labels"])
    folders = {p.name for p in args.images.iterdir() if p.is_dir()}
    if unknown := sorted(reject - set(labels) - folders):
        sys.exit(f"device demo: --reject {','.join(unknown)}: neither a label of {args.bundle} "
                 f"({', '.join(labels)}) nor a folder of {args.images}")
    args.out.mkdir(parents=True, exist_ok=True)
    results = (args.out / "results.jsonl").resolve()
    results.unlink(missing_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="edgetl-device-demo-"))
    token = os.urandom(16).hex()
    token_file = tmp / "token"
    token_file.write_text(token + "\n")
    os.chmod(token_file, 0o600)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_agent(tmp / "state", token_file, args.trust, port, args.out / "agent.log",
                       [args.images.resolve(), args.out.resolve()])
    try:
        print(f"\n$ edgetl deploy {args.bundle} --device {url} --token-file {token_file}", flush=True)
        deploy = subprocess.run([*EDGETL, "deploy", str(args.bundle), "--device", url, "--token-file",
                                 str(token_file)], cwd=ROOT)
        if deploy.returncode != 0:
            sys.exit(f"device demo: deploy failed (exit status {deploy.returncode})")
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            request = {"source": str(args.images.resolve()),
                       "sinks": [{"name": "jsonl", "options": {"path": str(results)}}]}
            print(f"\nPOST /v1/pipeline {json.dumps(request)}", flush=True)
            response = client.post("/v1/pipeline", json=request)
            if response.status_code != 200:
                sys.exit(f"device demo: pipeline refused: {response.json().get('error')}")
            deadline = time.monotonic() + 600
            while (status := client.get("/v1/pipeline").json()["status"])["state"] in ("running", "starting"):
                if time.monotonic() > deadline:
                    sys.exit("device demo: the replay did not finish within 10 minutes")
                time.sleep(0.2)
            print(f"pipeline {status['state']}: {status['frames']} frames, {status['dropped']} dropped, "
                  f"{status['sink_errors']} sink errors", flush=True)
            metrics = client.get("/metrics").text
            if args.heatmap:
                heatmap(client, args.heatmap, args.out / "heatmap.png")
    finally:
        stop_agent(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    summary = summarise(lines, labels, reject)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nresults: {results} ({summary['n']} lines); summary: {args.out / 'summary.json'}")
    print(summary_text(summary, labels))
    if route:
        print(routing_text(lines, route))
    predictions = [m for m in metrics.splitlines() if m.startswith("edgetl_predictions_total{")]
    print("agent metrics:\n  " + "\n  ".join(predictions))


if __name__ == "__main__":
    main()
