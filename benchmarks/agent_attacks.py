"""Peak agent memory (and answer, and time) under each attack of issue 13, for one checkout.

Each attack runs against a fresh ``edgetl agent serve`` subprocess serving the tiny test bundle;
its peak RSS is read from ``/proc/PID/status`` (VmHWM, reset through ``clear_refs`` just before the
attack), so the figure is the agent's own, not this script's. Run it once per checkout to compare
before and after a change, side by side on the same machine:

    nice -n 10 python benchmarks/agent_attacks.py --checkout /path/to/old --label before
    nice -n 10 python benchmarks/agent_attacks.py --label after

Prints a table and writes ``benchmarks/results/agent_attacks-<label>.json``. Needs torch (to build
the test bundle) and about 3 GB of free memory for an unprotected checkout.
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

TOKEN = "bench-token"


def proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


class Agent(load.Agent):
    """An agent process whose peak RSS can be reset and read."""

    def __init__(self, root: Path, checkout: Path, pub: Path, name: str):
        super().__init__(root, name, pub, TOKEN, checkout=checkout)
        self.wait()

    def client(self, token: str = TOKEN) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=300)

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
    return run


ATTACKS = {
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
}


def build_inputs(work: Path) -> tuple[Path, dict]:
    import hostile
    from agent_support import Bundles, resign

    b = Bundles(work / "bundles")
    # without bundle_version, so that a checkout from before that field (extra="forbid") installs them too
    b.v1 = resign(b.v1, work / "v1.edgetl", b.key, edit_manifest=lambda m: m.pop("bundle_version", None))
    b.v2 = resign(b.v2, work / "v2.edgetl", b.key, edit_manifest=lambda m: m.pop("bundle_version", None))
    files = {
        "zip_bomb": hostile.zip_bomb(b.v2, work / "zip_bomb.edgetl", b.key, 1024),
        "manifest_bomb": hostile.reserved_member_bomb(work / "mb.edgetl", "manifest.json", 512),
        "signature_bomb": hostile.reserved_member_bomb(work / "sb.edgetl", "signature", 512),
        "many_members": hostile.many_members(work / "many.edgetl", 20000),
        "png_bomb": hostile.png_bomb(20000, 20000),
        "png_huge": hostile.png_bomb(33000, 33000),
        "jpeg_tail": hostile.jpeg_with_tail(b.jpeg(), 100),
    }
    return b, files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the edgetl source tree the agent runs")
    parser.add_argument("--label", default="after")
    parser.add_argument("--only", help="run only attacks whose name contains this")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgetl-attacks-"))
    b, files = build_inputs(work)
    rows = []
    for name, attack in ATTACKS.items():
        if args.only and args.only not in name:
            continue
        agent = Agent(work, args.checkout.resolve(), b.pub, f"agent{len(rows)}")
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
