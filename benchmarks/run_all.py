"""Run every maintained benchmark (each top-level script here), collect their JSON, print one summary (``make bench``).

Each script runs as its own process (so one's threads, caches and imports do
not colour another's figures), one after another, its table passing through
to this terminal. ``BENCH=quick`` (the default) gives each script its short
setting; ``BENCH=full`` the script's own defaults and the ELPV strategy
training, which ``quick`` skips with a note (it trains three EfficientNet-Lite0
models on 2,600 images: hours on a laptop CPU). The one-off experiments in ``experiments/`` are
not run (their README says how). After ``export_targets`` the
exported bundles and the run they came from are measured side by side with
``edgetl bench`` on the benchmark's validation images.

    python benchmarks/run_all.py                   # quick
    BENCH=full python benchmarks/run_all.py        # everything, the scripts' own sizes
    python benchmarks/run_all.py --only agent_load --only bench --list

Writes ``benchmarks/results/summary-<mode>.json``: per step its command, exit
status, seconds, JSON files and headline figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
PY = sys.executable
ELPV_FOUR = ROOT / "data" / "elpv-four"


@dataclass
class Step:
    """One benchmark: how to run it in each mode, where its JSON lands, and what to quote from it."""

    name: str
    script: str | None  # benchmarks/<script>; None for a step that runs the edgetl CLI
    argv: Callable[[str], list[str] | None]  # mode -> arguments, None = skip in that mode
    outputs: Callable[[str, float], list[Path]]  # (mode, start time) -> JSON files it wrote
    headline: Callable[[dict[str, Any]], dict[str, Any]]
    skip_note: str = ""
    needs: list[Callable[[], None]] = field(default_factory=list)

    def command(self, mode: str) -> list[str] | None:
        args = self.argv(mode)
        if args is None:
            return None
        if self.script is None:
            return [PY, "-m", "edgetl", *args]
        return [PY, str(HERE / self.script), *args]


def _quick(mode: str) -> bool:
    return mode != "full"


def _newer(pattern: str, since: float) -> list[Path]:
    return sorted((p for p in RESULTS.glob(pattern) if p.stat().st_mtime >= since), key=lambda p: p.stat().st_mtime)


def _export_dir(mode: str) -> Path:
    """export_targets reuses its work/ folder (images, run): quick and full keep separate ones."""
    return RESULTS / "export-quick" if _quick(mode) else RESULTS


def _ensure_elpv_four() -> None:
    if (ELPV_FOUR / "train").is_dir():
        return
    print(f"materialising ELPV four-class into {ELPV_FOUR} (offline, from the elpv-dataset package)", flush=True)
    subprocess.run([PY, "-m", "edgetl", "data", "elpv", str(ELPV_FOUR), "--classes", "four"], check=True, cwd=ROOT)


def _bench_argv(mode: str) -> list[str] | None:
    work = (_export_dir(mode) / "work").relative_to(ROOT)  # relative: the table stays narrow (cwd is ROOT)
    bundles = sorted(str(p.relative_to(ROOT)) for p in (ROOT / work).glob("*.edgetl"))
    if not (ROOT / work / "run" / "model.pt").is_file() or not bundles:
        return None
    runs = "30" if _quick(mode) else "200"
    return ["bench", str(work / "run"), *bundles, "--data", str(work / "elpv" / "val"), "--runs", runs,
            "--out", str((RESULTS / f"bench-{mode}").relative_to(ROOT))]


def _export_steps_argv(mode: str) -> list[str] | None:
    """Every step of ``edgetl export --precision auto`` timed, on export_targets' run, this tree only."""
    run = _export_dir(mode) / "work" / "run"
    if not (run / "model.pt").is_file():
        return None
    formats = ["--format", "onnx"] if _quick(mode) else ["--format", "onnx", "--format", "openvino"]
    return [str(run.relative_to(ROOT)), *formats, "--code", f"this={ROOT}",
            "--out", str(RESULTS / f"export_steps-{mode}.json")]


# agent_attacks in quick mode: the attacks that take seconds (the full set holds 2,000-connection slowloris rows)
QUICK_ATTACKS = "zip bomb,manifest.json inflating,pre-auth invented"


def _headline_export(doc: dict[str, Any]) -> dict[str, Any]:
    return {"torch_eager_fp32_ms": doc.get("torch_eager_fp32_ms"),
            "rows": [f"{r['target']} {r['precision']}/{r['method']}: {'pass' if r['passed'] else 'fail'}, "
                     f"agreement {r.get('agreement')}, {r.get('latency_ms')} ms" for r in doc.get("rows", [])]}


def _headline_bench(doc: dict[str, Any]) -> dict[str, Any]:
    return {m["path"]: {"median_ms": round(m["latency_ms"]["median"], 3), "speedup": m["speedup"],
                        "accuracy": m["accuracy"], "agreement": m["agreement"]} for m in doc.get("models", [])}


STEPS = [
    Step("train_throughput", "train_throughput.py",
         lambda m: (["--images", "64", "--size", "128", "--rounds", "1"] if _quick(m) else [])
         + ["--out", str(RESULTS / f"train_throughput-{m}.json")],
         lambda m, t: _newer(f"train_throughput-{m}.json", t),
         lambda d: {"best_img_per_s": d.get("best_img_per_s")}, needs=[_ensure_elpv_four]),
    Step("export_targets", "export_targets.py",
         lambda m: (["--targets", "onnx,openvino", "--runs", "30", "--calib-count", "32", "--train-count", "96",
                     "--val-count", "64"] if _quick(m) else []) + ["--out", str(_export_dir(m))],
         lambda m, t: [p for p in _export_dir(m).glob("export_targets-*.json") if p.stat().st_mtime >= t],
         _headline_export),
    Step("bench", None, _bench_argv, lambda m, t: _newer(f"bench-{m}/bench.json", t), _headline_bench,
         skip_note="needs export_targets' run and bundles (run it first)"),
    Step("agent_load", "agent_load.py",
         lambda m: (["--n", "50", "--clients", "8", "--requests", "20"]
                    if _quick(m) else []) + ["--out", str(RESULTS / f"agent_load-{m}.json")],
         lambda m, t: _newer(f"agent_load-{m}.json", t),
         lambda d: {k: d.get("latency", {}).get(k) for k in ("http_p50_ms", "http_p99_ms")}),
    Step("fleet_rollout", "fleet_rollout.py",
         lambda m: (["--fleet", "3", "--parallel", "2"] if _quick(m) else [])
         + ["--out", str(RESULTS / f"fleet_rollout-{m}.json")],
         lambda m, t: _newer(f"fleet_rollout-{m}.json", t),
         lambda d: {k: d.get(k) for k in ("ratio_cold", "ratio_warm", "ratio_warm_parallel4")}),
    Step("predict_overhead", "predict_overhead.py",
         lambda m: (["--rounds", "2", "--block", "10"] if _quick(m) else [])
         + ["--out", str(RESULTS / f"predict_overhead-{m}.json")],
         lambda m, t: _newer(f"predict_overhead-{m}.json", t),
         lambda d: {name: r.get("ratio_http_over_raw") for name, r in d.get("results", {}).items()}),
    Step("textures_calibration", "textures_calibration.py",
         lambda m: ["--json-out", str(RESULTS / f"textures_calibration-{m}.json")],
         lambda m, t: _newer(f"textures_calibration-{m}.json", t),
         lambda d: {k: d.get(k) for k in ("probe_acc", "stats_acc", "calibrated")}),
    Step("export_steps", "export_steps.py", _export_steps_argv,
         lambda m, t: _newer(f"export_steps-{m}.json", t),
         lambda d: {fmt: {label: r.get("total_s", r.get("wall_s")) for label, r in by_label.items()}
                    for fmt, by_label in (d.get("results") or {}).items()},
         skip_note="needs export_targets' run (run it first)"),
    Step("busy_cpu_predict", "busy_cpu_predict.py",
         lambda m: ["--rounds", "1", "--images", "4", "--before", "HEAD"] if _quick(m) else [],
         lambda m, t: _newer("busy_cpu_predict.json", t),
         lambda d: {f"{r['code']} {r['setting']}": round(r["median_ms"], 1) for r in d.get("rows", [])}),
    Step("agent_rollbacks", "agent_rollbacks.py",
         lambda m: (["--rollbacks", "10"] if _quick(m) else []) + ["--label", f"bench-{m}"],
         lambda m, t: _newer(f"agent_rollbacks-bench-{m}.json", t),
         lambda d: {k: d.get(k) for k in ("rollbacks_ok", "predictions", "errors")}),
    Step("agent_attacks", "agent_attacks.py",
         lambda m: (["--only", QUICK_ATTACKS] if _quick(m) else []) + ["--label", f"bench-{m}"],
         lambda m, t: _newer(f"agent_attacks-bench-{m}.json", t),
         lambda d: {r["attack"]: f"peak {r['peak_mib']:.0f} MiB, alive {r['agent_alive']}" for r in d.get("rows", [])}),
    Step("agent_fuzz", "agent_fuzz.py",
         lambda m: (["--examples", "20"] if _quick(m) else []) + ["--out", str(RESULTS / f"agent_fuzz-{m}.json")],
         lambda m, t: _newer(f"agent_fuzz-{m}.json", t),
         lambda d: {k: d.get(k) for k in ("examples", "cases", "5xx", "models_lost")}),
    Step("fleet_pull", "fleet_pull.py",
         lambda m: ["--devices", "20", "--interval", "2", "--steady", "4"] if _quick(m) else [],
         lambda m, t: _newer("fleet_pull.json", t),
         lambda d: {"errors": (d.get("total") or {}).get("errors"),
                    "release_t100_s": (d.get("release") or {}).get("t100_s")}),
    Step("line_latency", "line_latency.py",
         lambda m: (["--triggers", "30", "--rates", "10", "--camera", "in-process"] if _quick(m) else [])
         + ["--out", str(RESULTS / f"line_latency-{m}.json")],
         lambda m, t: _newer(f"line_latency-{m}.json", t),
         lambda d: {"bayer_to_bgr_ms": d.get("bayer_to_bgr_ms"), "runs": len(d.get("runs", []))}),
    Step("ui_cost", "ui_cost.py",
         lambda m: ["--seconds", "4", "--rounds", "1"] if _quick(m) else [],
         lambda m, t: _newer("ui_cost.json", t),
         lambda d: {"page_cost_pct_of_one_core": d.get("page_cost_pct_of_one_core")}),
    Step("elpv_strategies", "elpv_strategies.py",
         lambda m: None if _quick(m) else ["--results", str((RESULTS / "elpv_strategies.json").relative_to(ROOT))],
         lambda m, t: _newer("elpv_strategies.json", t),
         lambda d: {name: {k: v for k, v in (r.get("test") or {}).items() if k in ("accuracy", "balanced_accuracy")}
                    for name, r in (d.get("runs") or {}).items()},
         skip_note="trains three EfficientNet-Lite0 models on ELPV (hours on a CPU): BENCH=full make bench"),
]


def run_step(step: Step, mode: str) -> dict[str, Any]:
    """Run one step; its output passes through. Returns its summary row."""
    if step.script is not None and not (HERE / step.script).is_file():
        return {"name": step.name, "status": "absent", "note": f"benchmarks/{step.script} does not exist"}
    command = step.command(mode)
    if command is None:
        return {"name": step.name, "status": "skipped", "note": step.skip_note}
    for need in step.needs:
        need()
    print(f"\n=== {step.name}: {' '.join(Path(c).name if i < 2 else c for i, c in enumerate(command))}", flush=True)
    start = time.time()
    proc = subprocess.run(command, cwd=ROOT)
    seconds = time.time() - start
    files = step.outputs(mode, start - 1)
    row: dict[str, Any] = {"name": step.name, "status": "ok" if proc.returncode == 0 else "failed",
                           "exit_code": proc.returncode, "seconds": round(seconds, 1),
                           "command": command, "json": [str(p.relative_to(ROOT)) for p in files]}
    if files:
        try:
            row["headline"] = step.headline(json.loads(files[-1].read_text()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            row["headline"] = {"unreadable": f"{type(exc).__name__}: {exc}"}
    elif proc.returncode == 0:
        row["status"], row["note"] = "failed", "exited 0 but wrote no JSON"
    return row


def print_summary(rows: list[dict[str, Any]], mode: str) -> None:
    print(f"\n=== summary ({mode})")
    for row in rows:
        where = ", ".join(row.get("json", [])) or row.get("note", "")
        took = f"{row['seconds']:>7.1f} s" if "seconds" in row else " " * 9
        print(f"{row['name']:<22}{row['status']:<9}{took}  {where}")
        for key, value in (row.get("headline") or {}).items():
            text = json.dumps(value, default=str) if not isinstance(value, list) else "\n      ".join(value)
            print(f"    {key}: {text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["quick", "full"], default=os.environ.get("BENCH") or "quick",
                        help="default: $BENCH, else quick")
    parser.add_argument("--only", action="append", choices=[s.name for s in STEPS], help="run only these (repeat)")
    parser.add_argument("--list", action="store_true", help="print the plan (commands, skips) and run nothing")
    args = parser.parse_args(argv)
    if args.mode not in ("quick", "full"):
        parser.error(f"BENCH={args.mode}: expected quick or full")
    steps = [s for s in STEPS if not args.only or s.name in args.only]
    if args.list:
        for step in steps:
            present = step.script is None or (HERE / step.script).is_file()
            command = step.command(args.mode) if present else None
            print(f"{step.name:<22}" + (" ".join(command) if command else
                                         f"skipped: {step.skip_note}" if present else "absent"))
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = [run_step(step, args.mode) for step in steps]
    print_summary(rows, args.mode)
    summary = RESULTS / f"summary-{args.mode}.json"
    summary.write_text(json.dumps({"mode": args.mode, "python": sys.version.split()[0], "cpus": os.cpu_count(),
                                   "steps": rows}, indent=2, default=str) + "\n")
    print(f"wrote {summary.relative_to(ROOT)}")
    return 0 if all(r["status"] in ("ok", "skipped", "absent") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
