"""Agent load benchmark: HTTP overhead, concurrency and fleet rollout time, all on 127.0.0.1.

Measures, in one run (the same machine and bundle for every figure):

1. ``/v1/predict`` on a JPEG (client round trip, and the agent's own
   ``latency_ms``) against the raw ``Runtime.predict`` call on the same
   preprocessed tensor, in this process: the ratio is the price of HTTP,
   JPEG decoding and preprocessing.
2. ``--clients`` concurrent clients × ``--requests`` requests each: errors,
   p50/p99 latency, throughput.
(The fleet rollout against one device is benchmarks/fleet_rollout.py; the Lite0 predict overhead
with medians side by side is benchmarks/predict_overhead.py.)

Prints a table and writes ``benchmarks/results/agent_load.json``.

    python benchmarks/agent_load.py                       # builds the tiny test bundle (needs torch)
    python benchmarks/agent_load.py --bundle m.edgetl --trust release.pub --image part.jpg
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pct(values, q):
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


class Agent:
    """``edgetl agent serve`` in a subprocess on 127.0.0.1 (``checkout``: the source tree it runs)."""

    def __init__(self, root: Path, name: str, trust: Path, token: str, checkout: Path = ROOT):
        self.state = root / name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        token_file = root / f"{name}.token"
        token_file.write_text(token + "\n")
        self.token_file = token_file
        self.log = open(root / f"{name}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgetl", "agent", "serve", "--state-dir", str(self.state), "--port",
             str(self.port), "--token-file", str(token_file), "--trust", str(trust), "--log-level", "warning"],
            cwd=checkout, stdout=self.log, stderr=subprocess.STDOUT,
            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{checkout}:{checkout}/plugins"))
        self.token = token

    def wait(self, timeout: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.url} exited: see {self.log.name}")
            try:
                if httpx.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"agent {self.url} not ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def make_bundle(root: Path) -> tuple[Path, Path, bytes]:
    sys.path.insert(0, str(ROOT / "tests"))
    from bundle_factory import make_tiny_bundle  # noqa: E402

    from edgetl.keys import generate_keypair

    key, pub = generate_keypair(root / "bench")
    bundle = make_tiny_bundle(root / "make", key=key, out=root / "bench.edgetl")
    import cv2

    image = cv2.imread(str(next((root / "make" / "data" / "val").rglob("*.png"))))
    ok, jpeg = cv2.imencode(".jpg", image)
    return bundle, pub, jpeg.tobytes()


def measure_latency(agent: Agent, token: str, bundle: Path, jpeg: bytes, n: int) -> dict:
    """Sequential /v1/predict vs Runtime.predict on the same preprocessed tensor."""
    import httpx

    from edgetl.api import InputSpec
    from edgetl.bundle import extract_bundle, load_runtime, open_bundle
    from edgetl.preprocess import decode_image, preprocess

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"}
    http_ms, server_ms = [], []
    with httpx.Client(base_url=agent.url, headers=headers, timeout=30) as client:
        for _ in range(20):
            client.post("/v1/predict", content=jpeg)
        for _ in range(n):
            start = time.perf_counter()
            doc = client.post("/v1/predict", content=jpeg).json()
            http_ms.append((time.perf_counter() - start) * 1000)
            server_ms.append(doc["latency_ms"])
    with tempfile.TemporaryDirectory() as tmp, open_bundle(bundle) as opened:
        manifest = opened.manifest
        extract_bundle(bundle, tmp, 1 << 30)
        runtime = load_runtime(tmp, manifest)
        tensor = preprocess(decode_image(jpeg), InputSpec.from_dict(manifest["input"]))
        for _ in range(20):
            runtime.predict(tensor)
        raw_ms = []
        for _ in range(n):
            start = time.perf_counter()
            runtime.predict(tensor)
            raw_ms.append((time.perf_counter() - start) * 1000)
        runtime.close()
    p50_http, p50_raw = statistics.median(http_ms), statistics.median(raw_ms)
    return {"n": n, "http_p50_ms": p50_http, "http_p99_ms": pct(http_ms, 99),
            "agent_latency_ms_p50": statistics.median(server_ms), "raw_runtime_p50_ms": p50_raw,
            "raw_runtime_p99_ms": pct(raw_ms, 99), "ratio_http_over_raw": p50_http / p50_raw,
            "tensor_shape": list(tensor.shape)}


async def _load_part(url: str, token: str, jpeg: bytes, clients: int, requests: int) -> dict:
    """``clients`` concurrent clients in this process, each sending ``requests`` predictions in turn."""
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as client:
        async def one_client() -> None:
            for _ in range(requests):
                start = time.perf_counter()
                try:
                    response = await client.post("/v1/predict", content=jpeg)
                    if response.status_code != 200:
                        errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
                        continue
                    latencies.append((time.perf_counter() - start) * 1000)
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return {"latencies": latencies, "errors": errors}


def _load_process(args: tuple) -> dict:
    return asyncio.run(_load_part(*args))


def measure_load(url: str, token: str, jpeg: bytes, clients: int, requests: int, procs: int) -> dict:
    """``clients`` concurrent clients spread over ``procs`` client processes (one Python process
    cannot drive 50 connections fast enough to load the agent: its own event loop becomes the limit)."""
    from concurrent.futures import ProcessPoolExecutor

    procs = max(1, min(procs, clients))
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=procs) as pool:
        parts = list(pool.map(_load_process, [(url, token, jpeg, n, requests) for n in shares]))
    wall = time.perf_counter() - start
    latencies = [x for part in parts for x in part["latencies"]]
    errors: dict[str, int] = {}
    for part in parts:
        for kind, count in part["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    return {"clients": clients, "client_processes": procs, "requests_per_client": requests,
            "total": clients * requests, "errors": sum(errors.values()), "error_kinds": errors,
            "p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99), "max_ms": max(latencies),
            "wall_s": wall, "throughput_rps": len(latencies) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--trust", type=Path)
    parser.add_argument("--image", type=Path, help="a JPEG to send (default: one of the tiny set)")
    parser.add_argument("--n", type=int, default=300, help="sequential requests for the latency ratio")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--client-procs", type=int, default=max(1, min(8, (os.cpu_count() or 2) // 2)),
                        help="client processes the concurrent clients are spread over")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "agent_load.json")
    args = parser.parse_args()

    from edgetl.deploy.rollout import DeviceTarget, deploy_fleet

    root = Path(tempfile.mkdtemp(prefix="edgetl-agent-bench-"))
    try:
        if args.bundle:
            bundle, pub, jpeg = args.bundle, args.trust, args.image.read_bytes()
        else:
            bundle, pub, jpeg = make_bundle(root)
        agent = Agent(root, "main", pub, "bench-token-0123456789")
        try:
            agent.wait()
            (_, ok) = deploy_fleet(bundle, [DeviceTarget("main", agent.url, "bench-token-0123456789")])
            assert ok, "the bundle did not install"
            latency = measure_latency(agent, "bench-token", bundle, jpeg, args.n)
            load = measure_load(agent.url, "bench-token", jpeg, args.clients, args.requests, args.client_procs)
        finally:
            agent.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    doc = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "python": platform.python_version()},
           "bundle": str(args.bundle or "tiny test bundle (timm:test_efficientnet, 48x48, onnx fp32)"),
           "latency": latency, "load": load}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    rows = [
        ("/v1/predict JPEG, round trip p50 / p99", f"{latency['http_p50_ms']:.2f} / {latency['http_p99_ms']:.2f} ms"),
        ("  agent's own latency_ms p50 (decode excluded)", f"{latency['agent_latency_ms_p50']:.2f} ms"),
        ("raw Runtime.predict p50 / p99", f"{latency['raw_runtime_p50_ms']:.3f} / {latency['raw_runtime_p99_ms']:.3f} ms"),
        ("ratio HTTP / raw (p50)", f"{latency['ratio_http_over_raw']:.1f} x"),
        (f"{load['clients']} clients ({load['client_processes']} processes) x {load['requests_per_client']} "
         "requests: errors",
         f"{load['errors']} of {load['total']}"),
        ("  latency p50 / p99", f"{load['p50_ms']:.1f} / {load['p99_ms']:.1f} ms"),
        ("  throughput", f"{load['throughput_rps']:.0f} req/s"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"agent load benchmark on {doc['machine']['cores']} cores, 127.0.0.1 ({doc['bundle']})")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
