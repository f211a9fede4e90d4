"""500 simulated devices pulling from a real registry, reporting to a real broker: what a fleet costs.

Each simulated device is the agent's own pull code (:class:`edgetl.device.pull.Puller`: HEAD of
the tag's manifest, manifest, capped and verified blob download, state) and its own MQTT status
publisher (:class:`edgetl.device.status_mqtt.StatusPublisher`: one paho connection each, the
retained status and the last will), driven by asyncio tasks over a thread pool. Only the install
is replaced: a device "installs" by recording the digest (an agent's install is measured by
benchmarks/fleet_rollout.py). The registry is Debian's docker-registry (CNCF distribution 2.8,
htpasswd auth, plain HTTP on 127.0.0.1); the broker mosquitto (password auth).

The poll interval is scaled down (``--interval``, default 5 s) so a run takes minutes, not hours;
request rates scale as devices / interval, and rollout times as the interval, so the figures for
60 s are extrapolated from the measured ones and printed as such.

Phases: (1) first rollout: every device starts empty and downloads the bundle on ``stable`` or
``canary`` (5 % of devices); (2) steady state: ``--steady`` seconds of unchanged polls;
(3) release: push B to ``canary``, wait for the canaries, ``fleet promote --require`` all of them,
time from the tag move to 95 % / 100 % of the stable devices on B.

    nice -n 10 python benchmarks/fleet_pull.py [--devices 500] [--interval 5] [--steady 20]

Prints a table and writes ``benchmarks/results/fleet_pull.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


class Device:
    """One simulated device: the agent's Puller and StatusPublisher, an install that records the digest."""

    def __init__(self, i: int, ref: str, registry, broker, folder: Path, interval: float):
        from edgetl.device.oci import OciRef
        from edgetl.device.pull import PullConfig, Puller
        from edgetl.device.status_mqtt import StatusPublisher

        self.channel = ref.rsplit(":", 1)[1]
        config = PullConfig(ref=OciRef.parse(ref), interval=interval, insecure=True,
                            auth_file=str(registry.auth_file), timeout=30)
        class SimulatedStatus(StatusPublisher):
            """The agent's status message; a simulated device has no model, so it reports itself healthy."""

            def document(self, puller):
                return dict(super().document(puller), serving=None, bundle_version=None, health="ok",
                            agent_counters={"requests": 0, "server_errors": 0, "predictions": 0})

        self.publisher = SimulatedStatus(f"127.0.0.1:{broker.port}", device_id=f"sim{i:04d}",
                                         auth_file=str(broker.auth_file))
        self.puller = Puller(None, config, publisher=self.publisher, install=self.install, folder=folder)
        self.when: dict[str, float] = {}

    def install(self, digest: str, part: Path):
        part.unlink()
        self.puller.served_digest = digest
        self.puller.serving_since = time.time()
        self.when[digest] = time.monotonic()
        return True, None

    async def run(self, stop: asyncio.Event) -> None:
        delay = self.puller.next_delay(first=True)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return
            except asyncio.TimeoutError:
                pass
            await asyncio.to_thread(self.puller.poll_once)
            delay = self.puller.next_delay()


def percentile_time(times: list[float], start: float, share: float) -> float | None:
    times = sorted(times)
    k = int(len(times) * share + 0.999999) - 1
    return round(times[k] - start, 2) if len(times) > k >= 0 else None


async def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return False


async def main_async(args) -> dict:
    from agent_support import Bundles, resign
    from registry_support import Mosquitto, RegistryServer

    from edgetl.device.oci import OciRef, Registry, push_bundle

    scratch = tempfile.TemporaryDirectory(prefix="edgetl-fleet-pull-")  # removed at exit (bundles, agents' state)
    tmp = Path(scratch.name)
    b = Bundles(tmp / "bundles")
    release_a = resign(b.v1, tmp / "A.edgetl", b.key, edit_manifest=lambda m: m.update(model_version="A"))
    release_b = resign(b.v1, tmp / "B.edgetl", b.key, edit_manifest=lambda m: m.update(
        model_version="B", bundle_version=m["bundle_version"] + 1))
    size = release_b.stat().st_size
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(args.threads))
    out: dict = {"devices": args.devices, "interval_s": args.interval, "bundle_bytes": size,
                 "cpu": os.cpu_count(), "loadavg_start": os.getloadavg()}
    with RegistryServer(tmp / "registry") as registry, Mosquitto(tmp / "mqtt") as broker:
        repo = "fleet/cam"
        for tag in ("canary", "stable"):
            push_bundle(release_a, registry.url(repo, tag), insecure=True, auth_file=registry.auth_file)
        n_canary = max(1, args.devices * args.canary_percent // 100)
        devices = [Device(i, registry.url(repo, "canary" if i < n_canary else "stable"), registry, broker,
                          tmp / "dev" / str(i), args.interval) for i in range(args.devices)]
        stop = asyncio.Event()
        reg_cpu0, mq_cpu0, me0, t0 = cpu_seconds(registry.proc.pid), cpu_seconds(broker.proc.pid), own_cpu(), \
            time.monotonic()
        tasks = [asyncio.create_task(d.run(stop)) for d in devices]

        def on(digest_of, group):
            return sum(1 for d in group if d.puller.served_digest == digest_of)

        digest_a = Registry(OciRef.parse(registry.url(repo, "stable")), insecure=True,
                            auth_file=registry.auth_file).head_digest()
        ok = await wait_until(lambda: on(digest_a, devices) == len(devices), 10 * args.interval + 120)
        first = [d.when[digest_a] for d in devices if digest_a in d.when]
        out["first_rollout"] = {"all_on_A": ok, "t95_s": percentile_time(first, t0, 0.95),
                                "t100_s": percentile_time(first, t0, 1.0),
                                "downloaded_bytes": sum(d.puller.counters["downloaded_bytes"] for d in devices)}
        # steady state: every poll finds the tag unchanged
        await asyncio.sleep(args.interval)  # let the first-rollout tail settle
        req0 = sum(d.puller.registry.requests for d in devices)
        polls0 = sum(d.puller.counters["polls"] for d in devices)
        pub0 = sum(d.publisher.published for d in devices)
        reg0, mq0, me_s0, s0 = cpu_seconds(registry.proc.pid), cpu_seconds(broker.proc.pid), own_cpu(), \
            time.monotonic()
        await asyncio.sleep(args.steady)
        dt = time.monotonic() - s0
        steady = {"seconds": round(dt, 1),
                  "registry_requests_per_s": round((sum(d.puller.registry.requests for d in devices) - req0) / dt, 1),
                  "polls_per_s": round((sum(d.puller.counters["polls"] for d in devices) - polls0) / dt, 1),
                  "mqtt_messages_per_s": round((sum(d.publisher.published for d in devices) - pub0) / dt, 1),
                  "registry_cpu_percent": round(100 * (cpu_seconds(registry.proc.pid) - reg0) / dt, 1),
                  "broker_cpu_percent": round(100 * (cpu_seconds(broker.proc.pid) - mq0) / dt, 1),
                  "simulator_cpu_percent": round(100 * (own_cpu() - me_s0) / dt, 1),
                  "downloads": sum(d.puller.counters["downloads"] for d in devices) - len(devices)}
        scale = args.interval / 60.0
        steady["at_60s"] = {k: round(steady[k] * scale, 2) for k in
                            ("registry_requests_per_s", "polls_per_s", "mqtt_messages_per_s",
                             "registry_cpu_percent", "broker_cpu_percent")}
        out["steady"] = steady
        print(json.dumps({"first_rollout": out["first_rollout"], "steady": steady}), flush=True)

        # a release: B to canary, the canaries take it, promote to stable
        bytes0 = sum(d.puller.counters["downloaded_bytes"] for d in devices)
        reg_r0, mq_r0, r0 = cpu_seconds(registry.proc.pid), cpu_seconds(broker.proc.pid), time.monotonic()
        digest_b = push_bundle(release_b, registry.url(repo, "canary"), insecure=True,
                               auth_file=registry.auth_file)["digest"]
        canaries, stables = devices[:n_canary], devices[n_canary:]
        await wait_until(lambda: on(digest_b, canaries) == len(canaries), 3 * args.interval + 60)
        p0 = time.monotonic()
        # the promotion runs as the operator would run it: `edgetl fleet promote`, its own process
        cmd = [sys.executable, "-m", "edgetl", "fleet", "promote", registry.url(repo), "--from", "canary", "--to",
               "stable", "--require", str(len(canaries)), "--timeout", "120s", "--status-mqtt",
               f"127.0.0.1:{broker.port}", "--status-mqtt-auth", str(broker.auth_file), "--insecure",
               "--registry-auth", str(registry.auth_file)]
        proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        promoted = (await proc.communicate())[0].decode()
        if proc.returncode != 0:
            raise SystemExit(f"fleet promote failed: {promoted}")
        moved = time.monotonic()
        ok = await wait_until(lambda: on(digest_b, stables) == len(stables), 3 * args.interval + 120)
        done = time.monotonic()
        times = [d.when[digest_b] for d in stables if digest_b in d.when]
        rollout_bytes = sum(d.puller.counters["downloaded_bytes"] for d in devices) - bytes0
        out["release"] = {"all_on_B": ok, "canaries": len(canaries), "promote_s": round(moved - p0, 2),
                          "t95_s": percentile_time(times, moved, 0.95), "t100_s": percentile_time(times, moved, 1.0),
                          "bytes": rollout_bytes, "bytes_per_device": round(rollout_bytes / len(devices)),
                          "registry_cpu_s": round(cpu_seconds(registry.proc.pid) - reg_r0, 2),
                          "broker_cpu_s": round(cpu_seconds(broker.proc.pid) - mq_r0, 2),
                          "wall_s": round(done - r0, 1)}
        out["release"]["at_60s"] = {k: round(out["release"][k] / scale, 1) for k in ("t95_s", "t100_s")
                                    if out["release"][k] is not None}
        stop.set()
        await asyncio.gather(*tasks)
        out["total"] = {"registry_cpu_s": round(cpu_seconds(registry.proc.pid) - reg_cpu0, 2),
                        "broker_cpu_s": round(cpu_seconds(broker.proc.pid) - mq_cpu0, 2),
                        "simulator_cpu_s": round(own_cpu() - me0, 2), "wall_s": round(time.monotonic() - t0, 1),
                        "errors": sum(d.puller.counters["errors"] for d in devices),
                        "mean_poll_latency_note": "not measured"}
        print(json.dumps(out), flush=True)
        await asyncio.gather(*(asyncio.to_thread(d.publisher.close) for d in devices))
    out["loadavg_end"] = os.getloadavg()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--interval", type=float, default=5.0, help="poll interval of the run (s); 60 s is extrapolated")
    parser.add_argument("--steady", type=float, default=20.0, help="seconds of steady-state polling measured")
    parser.add_argument("--canary-percent", type=int, default=5)
    parser.add_argument("--threads", type=int, default=64, help="thread pool the simulated polls run on")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    s, r, f = result["steady"], result["release"], result["first_rollout"]
    rows = [
        ("devices / interval of the run", f"{args.devices} / {args.interval:g} s"),
        ("first rollout: 95 % / 100 % on A (s)", f"{f['t95_s']} / {f['t100_s']}"),
        ("steady: registry requests/s (run | at 60 s)", f"{s['registry_requests_per_s']} | {s['at_60s']['registry_requests_per_s']}"),
        ("steady: MQTT messages/s (run | at 60 s)", f"{s['mqtt_messages_per_s']} | {s['at_60s']['mqtt_messages_per_s']}"),
        ("steady: registry CPU % (run | at 60 s)", f"{s['registry_cpu_percent']} | {s['at_60s']['registry_cpu_percent']}"),
        ("steady: broker CPU % (run | at 60 s)", f"{s['broker_cpu_percent']} | {s['at_60s']['broker_cpu_percent']}"),
        ("steady: simulator CPU %", f"{s['simulator_cpu_percent']}"),
        ("steady: downloads (must be 0)", f"{s['downloads']}"),
        ("release: bytes served / per device (bundle)", f"{r['bytes']} / {r['bytes_per_device']} ({result['bundle_bytes']})"),
        ("release: promote (canaries healthy -> tag moved, s)", f"{r['promote_s']}"),
        ("release: tag move -> 95 % / 100 % stable on B (run, s)", f"{r['t95_s']} / {r['t100_s']}"),
        ("release: the same at 60 s (extrapolated, s)", f"{r['at_60s'].get('t95_s')} / {r['at_60s'].get('t100_s')}"),
        ("release: registry / broker CPU (s)", f"{r['registry_cpu_s']} / {r['broker_cpu_s']}"),
        ("errors (all phases)", f"{result['total']['errors']}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    out = ROOT / "benchmarks" / "results" / "fleet_pull.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
