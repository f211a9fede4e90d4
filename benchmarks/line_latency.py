"""The line's latency budget: software trigger sent -> verdict visible on the OPC UA node and the Modbus registers.

    python benchmarks/line_latency.py [--triggers 1000] [--rates 10,30] [--roi 512] [--camera fake-gv|in-process]

The cell of examples/line/fake_line.py (Aravis's fake GigE Vision camera on
127.0.0.1, ``edgetl agent serve`` in its own process with the ``genicam``
source, the ``opcua`` and ``modbus`` sinks, the texture set's linear probe
exported through the gate), N triggers per rate through
``POST /v1/pipeline/trigger``, the verdicts read by independent clients
(asyncua's, pymodbus's) polling every 5 ms. Per rate: p50/p99/max to each
peer, frames lost, the agent's CPU per frame (user + system time of its
process over the run / frames), and where the time goes, from each result's
own timestamps (the fake camera stamps frames with this host's clock):

- camera: trigger sent -> the frame's device timestamp (HTTP + GVCP command +
  the emulator's wait for its next frame slot)
- transport: device timestamp -> host receive (GVSP packets, Aravis's stream thread)
- inference: the result's ``latency_ms`` (preprocessing + runtime)
- rest: host receive -> visible on OPC UA, minus inference (Bayer conversion,
  the pipeline's hand-off, the sink, the client's poll)

Writes benchmarks/results/line_latency.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "line"))

from fake_line import OUT, Cell, fire, prepare_bundle  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def conversion_ms(size: int) -> float:
    """Median time of one BayerRG8 size x size frame to BGR (the conversion the genicam source does)."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "plugins"))
    from edgetl_builtins.line.pixels import to_bgr

    raw = np.random.default_rng(0).integers(0, 255, size * size, dtype=np.uint8).tobytes()
    times = []
    for _ in range(200):
        start = time.perf_counter()
        to_bgr("BayerRG8", raw, size, size)
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


def breakdown(summary: dict, results: list[dict]) -> dict:
    """Median ms of each stage. A result is matched to its OPC UA sighting by frame id, and to the last
    trigger sent before its device timestamp (so a lost frame does not shift the pairing)."""
    import bisect

    seen_at = {}
    for seen, frame_id in summary["_opcua"]:
        seen_at.setdefault(frame_id, seen)
    sent = summary["_sent"]
    rows = []
    for result in results:
        device = result["device_timestamp_ns"] / 1e9
        k = bisect.bisect_right(sent, device) - 1
        seen = seen_at.get(result["camera_frame_id"])
        if k < 0 or seen is None:
            continue
        rows.append({"camera": (device - sent[k]) * 1000, "transport": (result["host_received"] - device) * 1000,
                     "inference": result["latency_ms"],
                     "rest": (seen - result["host_received"]) * 1000 - result["latency_ms"]})
    if not rows:
        return {}
    return {stage: round(statistics.median(r[stage] for r in rows), 2) for stage in rows[0]} | {"matched": len(rows)}


def in_process_camera():
    """Aravis's fake GigE Vision camera on 127.0.0.1 in this process, answering triggers within 1 ms."""
    import gi

    gi.require_version("Aravis", "0.8")
    from gi.repository import Aravis

    camera = Aravis.GvFakeCamera.new("127.0.0.1", "EDGETL-BENCH")
    if not camera.is_running():
        sys.exit("line_latency: the in-process fake camera could not start (is another one on 127.0.0.1?)")
    camera.get_fake_camera().set_trigger_frequency(1000.0)
    return camera


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--triggers", type=int, default=1000)
    parser.add_argument("--rates", default="10,30")
    parser.add_argument("--roi", type=int, default=512, help="square frame size on the fake sensor (BayerRG8)")
    parser.add_argument("--camera", choices=("fake-gv", "in-process"), default="fake-gv",
                        help="fake-gv: arv-fake-gv-camera-0.8, whose software triggers wait for a 40 ms slot (it "
                             "emulates a 25 Hz trigger grid); in-process: the same GigE Vision camera started "
                             "here through Aravis (Aravis.GvFakeCamera) with its trigger grid at 1 kHz")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.out = args.out or ROOT / "benchmarks" / "results" / f"line_latency-{args.camera}.json"
    bundle, pub = prepare_bundle(OUT)
    report = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "load_average_start": os.getloadavg(), "triggers": args.triggers, "frame": f"{args.roi}x{args.roi} BayerRG8",
              "bayer_to_bgr_ms": conversion_ms(args.roi), "runs": []}
    report["camera"] = args.camera
    for hz in (float(r) for r in args.rates.split(",")):
        camera = in_process_camera() if args.camera == "in-process" else None
        with Cell(bundle, pub, OUT / f"bench-{args.camera}-{hz:g}hz", roi=(0, 0, args.roi, args.roi),
                  serial="EDGETL-BENCH" if camera else "EDGETL-LINE", start_camera=camera is None) as cell:
            cell.http.post("/v1/pipeline/trigger").raise_for_status()  # warm-up frame (first inference)
            time.sleep(1.0)
            cpu_before, frames_before = cpu_seconds(cell.agent.pid), cell.status()["frames"]
            summary = fire(cell, args.triggers, hz)
            cpu = cpu_seconds(cell.agent.pid) - cpu_before
            status = cell.status()
            frames, cell_stats = status["frames"] - frames_before, status["source_stats"]
            results = cell.results()[frames_before:]
        del camera
        run = {k: v for k, v in summary.items() if not k.startswith("_")}
        run["agent_cpu_ms_per_frame"] = round(cpu / max(frames, 1) * 1000, 2)
        run["stages_median_ms"] = breakdown(summary, results)
        run["source_stats"] = cell_stats
        run["load_average"] = os.getloadavg()
        report["runs"].append(run)
        print(json.dumps(run), file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nline latency, camera {args.camera}, {report['frame']}, {args.triggers} software triggers per rate "
          f"(CPU {report['cpu']}, {report['cores']} cores; load average at start {report['load_average_start']})")
    print("| rate | results | lost | OPC UA p50 / p99 / max ms | Modbus p50 / p99 / max ms | agent CPU ms/frame |"
          " camera / transport / inference / rest ms (median) |")
    print("|---|---|---|---|---|---|---|")
    for run in report["runs"]:
        stages = run["stages_median_ms"]
        stage_text = " / ".join(str(stages.get(k, "-")) for k in ("camera", "transport", "inference", "rest"))
        print(f"| {run['hz']:g} Hz | {run['results']} | {run['lost']} | {run['p50_ms']} / {run['p99_ms']} / "
              f"{run['max_ms']} | {run['modbus_p50_ms']} / {run['modbus_p99_ms']} / {run['modbus_max_ms']} | "
              f"{run['agent_cpu_ms_per_frame']} | {stage_text} |")
    print(f"Bayer 8 -> BGR conversion alone: {report['bayer_to_bgr_ms']} ms (median of 200)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
