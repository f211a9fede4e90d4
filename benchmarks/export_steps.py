"""Where `edgetl export --precision auto` spends its time: every step, for one or more code trees, side by side.

Runs ``edgetl export RUN --format F --precision auto --json`` as a fresh
process (imports included) for each format and each code tree (``--code
LABEL=DIR``, e.g. a checkout of the previous commit and this one), the trees
run one after the other in one job (under the heavy lock), so all see the same machine. Every stderr line
is time-stamped on arrival, so steps an older tree did not time (its data
step) are still accounted for as "untimed". Prints one table per format
(step -> seconds per tree) and writes the JSON.

    python benchmarks/export_steps.py runs/elpv-recipe-s0 --format openvino --format onnx \\
        --code before=/tmp/edgetl-before --code after=. --out benchmarks/results/export_steps.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_export(code: Path, run: str, fmt: str, extra: list[str], keep: Path | None = None,
               label: str = "") -> dict:
    """One export in a fresh process with ``code`` first on the path; returns wall time, log and document.

    ``keep``: a folder to keep the bundle in (``<label>-<format>.edgetl``), e.g. to evaluate it on test.
    """
    env = {**os.environ, "PYTHONPATH": f"{code}:{code / 'plugins'}", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="export-steps-") as tmp:
        out = (keep.resolve() / f"{label}-{fmt}.edgetl") if keep is not None else Path(tmp) / "b.edgetl"
        cmd = [sys.executable, "-m", "edgetl", "export", str(Path(run).resolve()), "--format", fmt, "--precision", "auto", "--json",
               "--out", str(out), *extra]
        start = time.perf_counter()
        # cwd: the temporary folder, so ``python -m`` cannot import the edgetl of the current folder
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp)
        log = [(round(time.perf_counter() - start, 1), line.rstrip()) for line in proc.stderr]
        out = proc.stdout.read()
        proc.wait()
        wall = time.perf_counter() - start
        origin = code_of(env, tmp)
    try:
        doc = json.loads(out)
    except json.JSONDecodeError:
        doc = {"error": out[-2000:]}
    return {"code": str(code), "format": fmt, "cmd": " ".join(cmd), "rc": proc.returncode, "wall_s": wall,
            "log": log, "edgetl_from": origin, "stages": doc.get("stages", []), "attempts": doc.get("attempts", []),
            "passed": doc.get("passed"), "precision": doc.get("precision"), "method": doc.get("method")}


def code_of(env: dict[str, str], cwd: str) -> str:
    """Where the export's edgetl is imported from (a check that ``--code`` took effect)."""
    probe = [sys.executable, "-c", "import edgetl, edgetl_builtins.onnx; print(edgetl.__file__, edgetl_builtins.onnx.__file__)"]
    return subprocess.run(probe, capture_output=True, text=True, env=env, cwd=cwd).stdout.strip()


def step_rows(result: dict) -> dict[str, float]:
    """Step -> seconds; the stages of one export, plus the wall time no stage accounts for."""
    rows: dict[str, float] = {}
    for stage in result["stages"]:
        rows[stage["stage"]] = rows.get(stage["stage"], 0.0) + stage["seconds"]
    rows["untimed (process start, imports, untimed steps)"] = result["wall_s"] - sum(rows.values())
    rows["wall (process start to exit)"] = result["wall_s"]
    return rows


def table(fmt: str, results: dict[str, dict]) -> str:
    labels = list(results)
    per = {label: step_rows(r) for label, r in results.items()}
    steps = list(dict.fromkeys(s for label in labels for s in per[label]))
    steps.sort(key=lambda s: s.startswith(("untimed", "wall")))
    lines = [f"### {fmt}", "", "| step | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for step in steps:
        lines.append(f"| {step} | " + " | ".join(f"{per[label][step]:.1f}" if step in per[label] else "-"
                                                 for label in labels) + " |")
    lines.append("| result | " + " | ".join(f"{r['precision']}/{r['method']}" if r["passed"] else "FAIL"
                                           for r in results.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--format", action="append", dest="formats", required=True)
    ap.add_argument("--code", action="append", required=True, help="LABEL=DIR of an edgetl tree (repeatable)")
    ap.add_argument("--extra", default="", help="extra export options, one string")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/export_steps.json"))
    ap.add_argument("--keep", type=Path, help="keep the bundles here (<label>-<format>.edgetl)")
    args = ap.parse_args()
    codes = dict(c.split("=", 1) for c in args.code)
    doc = {"run": args.run, "load_before": os.getloadavg(), "results": {fmt: {} for fmt in args.formats}}
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    for label, code in codes.items():  # every format of one tree, then the next tree: one job, one machine state
        for fmt in args.formats:
            print(f"{fmt} / {label} (load {os.getloadavg()[0]:.1f}) ...", file=sys.stderr, flush=True)
            doc["results"][fmt][label] = run_export(Path(code).resolve(), args.run, fmt, args.extra.split(),
                                                    args.keep, label)
            doc["results"][fmt][label]["load"] = os.getloadavg()
    doc["load_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    for fmt, results in doc["results"].items():
        print(table(fmt, results) + "\n")
    print(f"load average before {doc['load_before']}, after {doc['load_after']}; JSON: {args.out}")


if __name__ == "__main__":
    main()
