"""``edgetl predict`` on a busy CPU: default threads against ``OMP_NUM_THREADS=1``, before and after.

A new user on a shared 2-core machine saw 3.3-3.8 s per image with PyTorch's
default threads and 30-98 ms with one thread (issue 25): PyTorch took one
thread per core and its OpenMP threads spun waiting for siblings the
scheduler had parked behind other jobs. :mod:`edgetl.threads` now picks the
count from the free CPUs and sets a passive OpenMP wait policy.

This starts ``--hogs`` busy-loop processes, then runs the real command line,
``python -m edgetl predict RUN IMAGES --json``, four ways, interleaved in
rounds so a changing load hits each alike:

- **before / after**: the code of ``--before`` (a git ref, default ``main``,
  extracted with ``git archive`` into a temporary folder) and of this checkout;
- **default / OMP_NUM_THREADS=1**: no thread setting, or one thread.

The figure is the median per-image latency the command prints (its first
image, the warm-up, left out). Without ``--run`` it makes a small Lite0 run
first (``data textures --per-class 20``, a 5-epoch linear probe: ~20 s).
Run it niced, as the hogs are: ``nice -n 10 python benchmarks/busy_cpu_predict.py``.
Prints a table; writes ``benchmarks/results/busy_cpu_predict.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "busy_cpu_predict.json"
WORK = ROOT / "benchmarks" / "results" / "work" / "busy_cpu_predict"
SETTINGS = {"default": {}, "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"}}


def env_for(checkout: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(PYTHONPATH=f"{checkout}{os.pathsep}{checkout / 'plugins'}", **extra)
    return env


def edgetl(checkout: Path, *args: str, extra: dict[str, str] | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "edgetl", *args], env=env_for(checkout, extra or {}),
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"edgetl {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def make_run() -> Path:
    """A Lite0 linear probe on a small texture set (the tour's recipe, fewer images and epochs)."""
    run = WORK / "runs" / "lite0"
    if (run / "model.pt").is_file():
        return run
    data = WORK / "data"
    if not data.is_dir():
        edgetl(ROOT, "data", "textures", str(data), "--per-class", "20")
    recipe = (ROOT / "examples" / "defect_detection" / "textures-linear-probe.yaml").read_text(encoding="utf-8")
    config = WORK / "lite0.yaml"
    config.write_text(recipe.replace("data/textures", str(data)).replace("epochs: 40", "epochs: 5"),
                      encoding="utf-8")
    edgetl(ROOT, "train", str(config), "--out", str(run), "--force")
    return run


def extract(ref: str, into: Path) -> Path:
    """The tree of git ref ``ref`` under ``into`` (no worktree, nothing checked out in place)."""
    into.mkdir(parents=True)
    archive = into / "tree.tar"
    with archive.open("wb") as fh:
        subprocess.run(["git", "-C", str(ROOT), "archive", ref], stdout=fh, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def start_hogs(n: int) -> list[subprocess.Popen]:
    """``n`` processes that each keep one CPU busy (as the other jobs of a shared machine do)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: make a small Lite0 run)")
    parser.add_argument("--before", default="main", help="git ref of the code to compare with")
    parser.add_argument("--after", default=None, help="git ref of the new code (default: this working tree)")
    parser.add_argument("--hogs", type=int, default=2, help="busy-loop processes running meanwhile")
    parser.add_argument("--data", type=Path, default=WORK / "data" / "test", help="folder of .jpg images")
    parser.add_argument("--images", type=int, default=8, help="images per predict command")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the four commands, order rotating")
    args = parser.parse_args()

    run = args.run or make_run()
    images = sorted(str(p) for p in args.data.rglob("*.jpg"))[: args.images]
    if not images:
        raise SystemExit(f"{args.data}: no .jpg images; pass --data")
    samples: dict[tuple[str, str], list[float]] = {}
    walls: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="edgetl-before-") as tmp:
        codes = {"before": extract(args.before, Path(tmp) / "before"),
                 "after": extract(args.after, Path(tmp) / "after") if args.after else ROOT}
        cells = [(code, setting) for code in codes for setting in SETTINGS]
        hogs = start_hogs(args.hogs)
        try:
            time.sleep(2)  # let the hogs fill the run queue
            for r in range(args.rounds):
                for code, setting in cells[r % len(cells):] + cells[: r % len(cells)]:
                    t0 = time.perf_counter()
                    out = edgetl(codes[code], "predict", str(run), *images, "--json", extra=SETTINGS[setting])
                    walls.setdefault((code, setting), []).append(time.perf_counter() - t0)
                    lat = [json.loads(line)["latency_ms"] for line in out.splitlines() if line.strip()]
                    samples.setdefault((code, setting), []).extend(lat[1:])
                    print(f"round {r + 1}: {code:6} {setting:18} median {statistics.median(lat[1:]):8.1f} ms",
                          file=sys.stderr)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
    from edgetl.cpuinfo import cpu_info

    processor = cpu_info()["model"]
    rows = []
    for code in codes:
        med = {s: statistics.median(samples[(code, s)]) for s in SETTINGS}
        for setting in SETTINGS:
            xs = sorted(samples[(code, setting)])
            rows.append({"code": code, "setting": setting, "n": len(xs), "median_ms": med[setting],
                         "p10_ms": xs[len(xs) // 10], "p90_ms": xs[(len(xs) * 9) // 10],
                         "command_s_median": statistics.median(walls[(code, setting)]),
                         "ratio_to_one_thread": med[setting] / med["OMP_NUM_THREADS=1"]})
    print(f"\nedgetl predict {run} ({len(images)} images, first left out), {args.hogs} busy-loop processes, "
          f"{os.cpu_count()} CPUs ({processor}), load "
          f"{os.getloadavg()[0]:.1f}\n")
    print(f"{'code':8}{'setting':20}{'n':>4}{'median ms':>11}{'p10-p90 ms':>18}{'cmd s':>8}{'vs 1 thread':>13}")
    for row in rows:
        print(f"{row['code']:8}{row['setting']:20}{row['n']:>4}{row['median_ms']:>11.1f}"
              f"{row['p10_ms']:>9.1f}-{row['p90_ms']:<8.1f}{row['command_s_median']:>8.1f}"
              f"{row['ratio_to_one_thread']:>12.2f}×")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "before": args.before, "hogs": args.hogs, "cpus": os.cpu_count(),
                               "processor": processor, "run": str(run),
                               "images": len(images), "rounds": args.rounds, "rows": rows}, indent=2) + "\n",
                   encoding="utf-8")
    print(f"\nwrote {OUT}")


if __name__ == "__main__":
    main()
