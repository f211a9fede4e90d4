"""Peak agent memory (and answer, and time) under each attack of issues 13 and 24, for one checkout.

Each attack runs against a fresh ``edgetl agent serve`` subprocess serving the tiny test bundle;
its peak RSS is read from ``/proc/PID/status`` (VmHWM, reset through ``clear_refs`` just before the
attack), so the figure is the agent's own, not this script's. Run it once per checkout to compare
before and after a change, side by side on the same machine:

    nice -n 10 python benchmarks/agent_attacks.py --checkout /path/to/old --label before
    nice -n 10 python benchmarks/agent_attacks.py --label after

Prints a table and writes ``benchmarks/results/agent_attacks-<label>.json``. Needs torch (to build
the test bundle) and about 5 GB of free memory for an unprotected checkout.

The agent runs with the soft file-descriptor limit a systemd service gets by default (1024; hard
limit left as it is): issue 24's slowloris rows open 2,000 half-sent requests from 127.0.0.2, with
and without TLS, and time ``/v1/health`` and ``/v1/predict`` from 127.0.0.1 meanwhile (5 s timeout
per request); "log" is what the agent wrote to its log during the attack.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import string
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import agent_load as load  # noqa: E402

TOKEN = "bench-token-for-agent-attacks"  # the agent refuses tokens under 16 characters


def proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


SYSTEMD_NOFILE = 1024  # the soft RLIMIT_NOFILE of a systemd service without LimitNOFILE
HALF_OPEN = 2000


def _systemd_nofile() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (SYSTEMD_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


class Agent(load.Agent):
    """An agent process whose peak RSS can be reset and read (optionally with TLS)."""

    def __init__(self, root: Path, checkout: Path, pub: Path, name: str, tls: tuple[Path, Path] | None = None):
        import subprocess

        from net_helpers import free_port

        self.state, self.port, self.token, self.tls = root / name, free_port(), TOKEN, tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.token_file = root / f"{name}.token"
        self.token_file.write_text(TOKEN + "\n")
        self.log_path = root / f"{name}.log"
        self.log = open(self.log_path, "wb")
        args = [sys.executable, "-m", "edgetl", "agent", "serve", "--state-dir", str(self.state), "--port",
                str(self.port), "--token-file", str(self.token_file), "--trust", str(pub), "--log-level", "warning"]
        if tls:
            args += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        self.proc = subprocess.Popen(args, cwd=checkout, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=_systemd_nofile,
                                     env=dict(os.environ, OMP_NUM_THREADS="1",
                                              PYTHONPATH=f"{checkout}:{checkout}/plugins"))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.url} exited: see {self.log_path}")
            try:
                if httpx.get(self.url + "/v1/health", timeout=1, verify=self.verify).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"agent {self.url} not ready: see {self.log_path}")

    @property
    def verify(self):
        return str(self.tls[0]) if self.tls else True

    def client(self, token: str = TOKEN, timeout: float = 300) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout,
                            verify=self.verify)

    def reset_peak(self) -> int:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        return proc_status(self.proc.pid, "VmRSS")

    def peak(self) -> int:
        return proc_status(self.proc.pid, "VmHWM")


def install(agent: Agent, bundle: Path) -> None:
    from agent_support import install as do_install

    with agent.client() as client:
        assert do_install(client, bundle)["status"] == "installed"


def wait_status(agent: Agent, response: httpx.Response) -> str:
    if response.status_code != 202:
        return f"{response.status_code} {response.json().get('error', '')[:90]}"
    from agent_support import wait_install

    with agent.client() as client:
        doc = wait_install(client, response.json()["install_id"], timeout=600)
    return f"202 -> {doc['status']}: {(doc.get('error') or '')[:80]}"


def body_stream(mib: int):
    for _ in range(mib):
        yield b"x" * (1 << 20)


def attack_preauth_body(agent, files):
    with httpx.Client(base_url=agent.url, timeout=300) as anon:
        try:
            r = anon.patch("/v1/model/threshold", content=body_stream(256),
                           headers={"Authorization": "Bearer wrong", "Content-Type": "application/json",
                                    "Content-Length": str(256 << 20)})
            return f"{r.status_code}"
        except httpx.HTTPError as exc:  # the agent answered 401 and closed before the body was sent
            return f"connection closed early ({type(exc).__name__})"


def attack_metrics(agent, files):
    rng = random.Random(0)
    with httpx.Client(base_url=agent.url, timeout=30) as anon:
        before = len(anon.get("/metrics").content)
        for _ in range(3000):
            method = "M" + "".join(rng.choice(string.ascii_uppercase) for _ in range(8))
            anon.request(method, "/v1/health")
        after = len(anon.get("/metrics").content)
    return f"/metrics {before} -> {after} bytes after 3000 invented methods"


def upload_attack(name):
    def run(agent, files):
        with agent.client() as client:
            r = client.put("/v1/model", content=files[name].read_bytes(),
                           headers={"Content-Type": "application/octet-stream"})
        return wait_status(agent, r)
    return run


def predict_attack(name, concurrent=1):
    def run(agent, files):
        data = files[name]
        kind = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"

        def one(_):
            with agent.client() as client:
                r = client.post("/v1/predict", content=data, headers={"Content-Type": kind})
                return f"{r.status_code} {r.json().get('error', r.json().get('label', ''))[:70]}"
        with ThreadPoolExecutor(concurrent) as pool:
            return "; ".join(sorted(set(pool.map(one, range(concurrent)))))
    run.needs = name
    return run


def _half_open(agent: Agent, n: int) -> list:
    """``n`` connections from 127.0.0.2, each having sent half a request head (after the TLS handshake
    with TLS); connections the agent refuses or cannot accept are kept open on this side too."""
    import resource
    import socket
    import ssl

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 1024)), hard))
    context = ssl.create_default_context(cafile=str(agent.tls[0])) if agent.tls else None

    def one(_):
        raw = socket.socket()
        raw.bind(("127.0.0.2", 0))
        raw.settimeout(2)
        try:
            raw.connect(("127.0.0.1", agent.port))
            sock = context.wrap_socket(raw, server_hostname="127.0.0.1") if context else raw
            sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
            return sock
        except OSError:  # the handshake timed out: the agent could not accept it
            return raw
    with ThreadPoolExecutor(64) as pool:  # as an attacker would: in parallel, not one after another
        return list(pool.map(one, range(n)))


def attack_slowloris(agent, files):
    log_before = agent.log_path.stat().st_size
    start = time.monotonic()
    socks = _half_open(agent, HALF_OPEN)
    opened = time.monotonic() - start
    rows = {"health": [], "predict": []}
    image = files["jpeg"]
    try:
        with agent.client(timeout=5) as client:
            for _ in range(10):
                for route, call in (("health", lambda: client.get("/v1/health")),
                                    ("predict", lambda: client.post("/v1/predict", content=image,
                                                                    headers={"Content-Type": "image/jpeg"}))):
                    t0 = time.monotonic()
                    try:
                        ok = call().status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    rows[route].append(time.monotonic() - t0 if ok else None)
    finally:
        for sock in socks:
            sock.close()
    log_bytes = agent.log_path.stat().st_size - log_before

    def summary(values):
        done = sorted(v for v in values if v is not None)
        failed = len(values) - len(done)
        if not done:
            return f"all {failed} timed out"
        return f"median {done[len(done) // 2] * 1000:.0f} ms, max {done[-1] * 1000:.0f} ms, {failed} failed"
    return (f"{HALF_OPEN} opened in {opened:.1f} s; health {summary(rows['health'])}; predict "
            f"{summary(rows['predict'])}; log +{log_bytes} bytes")


TLS_ATTACKS = {"slowloris: 2000 half-open, TLS"}

ATTACKS = {
    "slowloris: 2000 half-open, HTTP": attack_slowloris,
    "slowloris: 2000 half-open, TLS": attack_slowloris,
    "PNG 6300x6300 (39.7 Mpix, under the cap), 16 concurrent": predict_attack("png_cap", 16),
    "pre-auth 256 MiB JSON body, wrong token": attack_preauth_body,
    "pre-auth invented HTTP methods": attack_metrics,
    "zip bomb: signed 1 GiB member (1 MB upload)": upload_attack("zip_bomb"),
    "manifest.json inflating to 512 MiB": upload_attack("manifest_bomb"),
    "signature inflating to 512 MiB": upload_attack("signature_bomb"),
    "20000 empty members": upload_attack("many_members"),
    "PNG 20000x20000 on /v1/predict": predict_attack("png_bomb"),
    "PNG 20000x20000, 2 concurrent": predict_attack("png_bomb", 2),
    "PNG 33000x33000 (> 2^30 pixels)": predict_attack("png_huge"),
    "JPEG + 100 MiB tail": predict_attack("jpeg_tail"),
    "PNG 1x1 inflating to 4 GiB": predict_attack("png_inflate"),
    "progressive JPEG 1024x1024, 256 KB: ~21000 scans": predict_attack("jpeg_scans"),
    "zip directory bomb (~500 MiB directory, 1 entry claimed)": upload_attack("dir_bomb"),
}


class _Lazy(dict):
    """Inputs built on first use: a run with --only builds only what its attacks need."""

    def __init__(self, builders):
        super().__init__()
        self.builders = builders

    def __missing__(self, name):
        self[name] = value = self.builders[name]()
        return value


def _flat(side: int):
    import numpy as np

    return np.full((side, side, 3), 128, np.uint8)  # its scans are a few bytes each: many fit in 256 KB


def build_inputs(work: Path) -> tuple[Path, dict]:
    import hostile
    from agent_support import Bundles, resign

    b = Bundles(work / "bundles")
    # without bundle_version, so that a checkout from before that field (extra="forbid") installs them too
    b.v1 = resign(b.v1, work / "v1.edgetl", b.key, edit_manifest=lambda m: m.pop("bundle_version", None))
    b.v2 = resign(b.v2, work / "v2.edgetl", b.key, edit_manifest=lambda m: m.pop("bundle_version", None))
    builders = {
        "zip_bomb": lambda: hostile.zip_bomb(b.v2, work / "zip_bomb.edgetl", b.key, 1024),
        "manifest_bomb": lambda: hostile.reserved_member_bomb(work / "mb.edgetl", "manifest.json", 512),
        "signature_bomb": lambda: hostile.reserved_member_bomb(work / "sb.edgetl", "signature", 512),
        "many_members": lambda: hostile.many_members(work / "many.edgetl", 20000),
        "png_bomb": lambda: hostile.png_bomb(20000, 20000),
        "png_huge": lambda: hostile.png_bomb(33000, 33000),
        "jpeg_tail": lambda: hostile.jpeg_with_tail(b.jpeg(), 100),
        "png_cap": lambda: hostile.png_bomb(6300, 6300),
        "png_inflate": lambda: hostile.png_inflate_bomb(4096),
        "jpeg_scans": lambda: hostile.many_scans_jpeg(_flat(1024), 100_000, max_bytes=256 * 1024),
        "jpeg": lambda: b.jpeg(),
        "dir_bomb": lambda: hostile.lying_directory_zip(work / "dir_bomb.edgetl", 400_000, name_len=600),
    }
    files = _Lazy(builders)
    return b, files


def self_signed_cert_once(work: Path) -> tuple[Path, Path]:
    from agent_support import self_signed_cert

    folder = work / "tls"
    if not folder.exists():
        folder.mkdir()
        return self_signed_cert(folder)
    return folder / "agent.crt", folder / "agent.key.pem"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the edgetl source tree the agent runs")
    parser.add_argument("--label", default="after")
    parser.add_argument("--only", help="run only attacks whose name contains one of these (comma-separated)")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="edgetl-attacks-")  # removed at exit (bundles, agents' state)
    work = Path(scratch.name)
    b, files = build_inputs(work)
    rows = []
    for name, attack in ATTACKS.items():
        if args.only and not any(part in name for part in args.only.split(",")):
            continue
        files[getattr(attack, "needs", "jpeg")]  # built now, not on the attack's clock
        tls = self_signed_cert_once(work) if name in TLS_ATTACKS else None
        agent = Agent(work, args.checkout.resolve(), b.pub, f"agent{len(rows)}", tls=tls)
        try:
            install(agent, b.v1)
            base = agent.reset_peak()
            start = time.monotonic()
            answer = attack(agent, files)
            seconds = time.monotonic() - start
            time.sleep(0.3)
            peak = agent.peak()
            alive = agent.proc.poll() is None
        finally:
            agent.stop()
        rows.append({"attack": name, "rss_before_mib": base / 2**20, "peak_mib": peak / 2**20,
                     "seconds": round(seconds, 2), "answer": answer, "agent_alive": alive})
        print(f"{name:<45} {base / 2**20:7.0f} -> {peak / 2**20:7.0f} MiB  {seconds:6.1f} s  {answer}",
              flush=True)
    out = ROOT / "benchmarks" / "results" / f"agent_attacks-{args.label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"label": args.label, "checkout": str(args.checkout), "load": os.getloadavg(),
                               "rows": rows}, indent=2))
    print(f"load average {os.getloadavg()}; wrote {out}")


if __name__ == "__main__":
    main()
