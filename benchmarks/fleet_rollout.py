"""A 20-agent fleet rollout (canary + the rest) against one device, and where the time goes.

Starts ``--fleet`` + 1 agents as separate processes on 127.0.0.1 (one model each, the tiny test
bundle), then, side by side in one run:

1. one device: a rollout of release A to a fresh agent (cold: the agent imports its runtime on
   the first install), then of release B (warm);
2. the fleet: A to ``--fleet`` fresh agents (canary, then the rest ``--parallel`` at a time),
   then B, then C with ``--parallel 4``.

For every device it collects the install's stage times (verify, stage, compatibility, load,
reference, switch) and the rest (upload, status polls, the two info calls), and it reads the CPU
time the agents used from ``/proc`` (and the deploy client's own CPU time): on a machine with fewer cores than agents the rollout is
bound by that CPU, which a real fleet (one device each) does not share.

    nice -n 10 python benchmarks/fleet_rollout.py [--fleet 20] [--parallel 19]

Prints a table and writes ``benchmarks/results/fleet_rollout.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
STAGES = ("verify", "stage", "compatibility", "load", "reference", "switch")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def releases(root: Path) -> tuple[Path, list[Path]]:
    from agent_support import Bundles, resign

    b = Bundles(root / "bundles")
    out = []
    for i, tag in enumerate("ABC"):
        out.append(resign(b.v1, root / f"{tag}.edgetl", b.key, edit_manifest=lambda m, i=i, tag=tag: m.update(
            model_version=f"{m['model_version']}-{tag}", bundle_version=1_000 + i)))
    return b.pub, out


def rollout(agents, bundle: Path, parallel: int) -> dict:
    from edgetl.deploy.client import DeviceClient
    from edgetl.deploy.rollout import DeviceTarget, deploy_fleet

    targets = [DeviceTarget(f"dev{i}", a.url, a.token) for i, a in enumerate(agents)]
    cpu_before = sum(cpu_seconds(a.proc.pid) for a in agents)
    host_before = time.process_time()
    start = time.perf_counter()
    results, ok = deploy_fleet(bundle, targets, parallel=parallel)
    wall = time.perf_counter() - start
    host_cpu = time.process_time() - host_before
    cpu = sum(cpu_seconds(a.proc.pid) for a in agents) - cpu_before
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    rest = []
    for target, res in zip(targets, results, strict=True):
        with DeviceClient(target.url, target.token) as client:
            status = client.install_status(res.install_id)
        times = {s["stage"]: s.get("seconds") or 0.0 for s in status["stages"]}
        for stage in STAGES:
            stages[stage].append(times.get(stage, 0.0))
        rest.append(res.seconds - sum(times.values()))
    return {"wall_s": wall, "ok": ok, "agent_cpu_s": cpu, "deploy_client_cpu_s": host_cpu, "devices": len(agents), "parallel": parallel,
            "canary_s": results[0].seconds, "device_s_p50": statistics.median(r.seconds for r in results),
            "stage_p50_s": {s: statistics.median(v) for s, v in stages.items()},
            "upload_poll_info_p50_s": statistics.median(rest)}


def main() -> None:
    from agent_load import Agent

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=19)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fleet_rollout.json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="edgetl-fleet-"))
    agents = []
    try:
        pub, (a, b, c) = releases(root)
        agents = [Agent(root, f"agent{i}", pub, f"fleet-token-{i:02d}-0123456") for i in range(args.fleet + 1)]
        for agent in agents:
            agent.wait()
        one, fleet = agents[:1], agents[1:]
        runs = {"one_cold": rollout(one, a, 1), "one_warm": rollout(one, b, 1),
                "fleet_cold": rollout(fleet, a, args.parallel), "fleet_warm": rollout(fleet, b, args.parallel),
                "fleet_warm_parallel4": rollout(fleet, c, 4)}
    finally:
        for agent in agents:
            agent.stop()
        shutil.rmtree(root, ignore_errors=True)
    doc = {"cores": os.cpu_count(), "load_average": os.getloadavg(), "fleet": args.fleet, "runs": runs,
           "ratio_cold": runs["fleet_cold"]["wall_s"] / runs["one_cold"]["wall_s"],
           "ratio_warm": runs["fleet_warm"]["wall_s"] / runs["one_warm"]["wall_s"],
           "ratio_warm_parallel4": runs["fleet_warm_parallel4"]["wall_s"] / runs["one_warm"]["wall_s"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print(f"fleet rollout on {doc['cores']} cores, load average {doc['load_average'][0]:.1f}")
    head = f"{'run':<22}{'wall s':>8}{'ok':>6}{'agent CPU s':>13}{'client CPU s':>13}{'device p50':>12}  " + \
        "  ".join(f"{s[:7]:>7}" for s in STAGES) + "  upload+poll+info"
    print(head)
    for name, run in runs.items():
        print(f"{name:<22}{run['wall_s']:8.2f}{str(run['ok']):>6}{run['agent_cpu_s']:13.2f}"
              f"{run['deploy_client_cpu_s']:13.2f}"
              f"{run['device_s_p50']:12.2f}  " + "  ".join(f"{run['stage_p50_s'][s]:7.3f}" for s in STAGES)
              + f"  {run['upload_poll_info_p50_s']:.3f}")
    print(f"ratio fleet/one: cold {doc['ratio_cold']:.1f}x, warm {doc['ratio_warm']:.1f}x "
          f"(parallel {args.parallel}), warm with parallel 4 {doc['ratio_warm_parallel4']:.1f}x; wrote {args.out}")


if __name__ == "__main__":
    main()
