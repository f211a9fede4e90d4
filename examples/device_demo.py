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


def summarise(lines: list[dict]) -> dict:
    """Counts per predicted label, and accuracy where the image's folder names its true class."""
    predicted = collections.Counter(r["label"] for r in lines)
    truth = [(Path(r["source"]).parts[0], r["label"]) for r in lines if len(Path(r["source"]).parts) > 1]
    doc = {"n": len(lines), "predicted": dict(predicted),
           "mean_latency_ms": sum(r["latency_ms"] for r in lines) / max(1, len(lines)),
           "models": sorted({r["model"] for r in lines})}
    if truth:
        doc["accuracy"] = sum(t == p for t, p in truth) / len(truth)
        per_class = collections.defaultdict(lambda: [0, 0])
        for t, p in truth:
            per_class[t][0] += t == p
            per_class[t][1] += 1
        doc["recall_per_class"] = {k: v[0] / v[1] for k, v in sorted(per_class.items())}
    return doc


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
    args = parser.parse_args()
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
    summary = summarise(lines)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nresults: {results} ({summary['n']} lines)")
    print(json.dumps(summary, indent=2))
    predictions = [m for m in metrics.splitlines() if m.startswith("edgetl_predictions_total{")]
    print("agent metrics:\n  " + "\n  ".join(predictions))


if __name__ == "__main__":
    main()
