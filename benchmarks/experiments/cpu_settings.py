"""CPU settings for training: torch threads and the memory allocator, side by side on the recipe's two costs.

The ELPV recipe (``elpv-four-partial.yaml``) spends its CPU time in two
loops: the frozen pass (stem + blocks 0-2 of EfficientNet-Lite0 at 300 px,
inference) and the top's training steps (blocks 3-6 + head convolution +
MLP head on the cached 40 x 38 x 38 maps, forward + backward + AdamW). Each
setting runs in its own process (an allocator is chosen at process start:
``LD_PRELOAD``), the settings alternate round by round so that load changes
hit them alike, and each reports the median img/s of its timed batches; the
table gives the median over rounds and the ratio to torch's default (all
cores, glibc malloc).

    python benchmarks/experiments/cpu_settings.py [--rounds 3] [--batches 6]

jemalloc is measured when ``libjemalloc.so.2`` is found (Debian:
``apt install libjemalloc2``), tcmalloc likewise (``libtcmalloc_minimal4``);
glibc itself also runs with mmap turned off (``GLIBC_TUNABLES``, no install).
Prints a table and writes benchmarks/results/cpu_settings.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALLOCATORS = {"jemalloc": "libjemalloc.so.2", "tcmalloc": "libtcmalloc_minimal.so.4"}
GLIBC_KEEP = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295"


def find_library(name: str) -> str | None:
    hits = sorted(glob.glob(f"/usr/lib/*/{name}") + glob.glob(f"/usr/lib/{name}"))
    return hits[0] if hits else None


def timed(step, batches: int, images: int) -> float:
    """Median img/s of ``batches`` calls of ``step`` after two warm-up calls."""
    for _ in range(2):
        step()
    rates = []
    for _ in range(batches):
        t0 = time.perf_counter()
        step()
        rates.append(images / (time.perf_counter() - t0))
    return statistics.median(rates)


def worker(threads: int, batches: int) -> dict[str, float]:
    """One setting's two loops (runs in the child process)."""
    import torch

    from edgetl.plugins import get_manager
    from edgetl.training import split_backbone

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = get_manager().get("backbone", "efficientnet_lite0").build(pretrained=True)
    model = model.to(memory_format=torch.channels_last).eval()
    bottom, top = split_backbone(model, 5)  # the recipe's cut: blocks 3-6 + conv_head train
    x = torch.randn(16, 3, 300, 300).contiguous(memory_format=torch.channels_last)

    def frozen_pass():
        with torch.inference_mode():
            bottom(x)

    with torch.inference_mode():
        maps = bottom(torch.randn(32, 3, 300, 300)).contiguous(memory_format=torch.channels_last)
    maps, y = maps.clone(), torch.randint(0, 4, (32,))
    head = torch.nn.Sequential(torch.nn.Linear(model.num_features, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4))
    top.train()
    opt = torch.optim.AdamW([*top.parameters(), *head.parameters()], lr=2e-4, weight_decay=0.05)

    def top_step():
        loss = torch.nn.functional.cross_entropy(head(top(maps).flatten(1)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rates = {"frozen_pass": timed(frozen_pass, batches, len(x)), "top_step": timed(top_step, batches, len(maps))}
    return {**rates, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB on Linux


def settings(max_threads: int) -> list[dict]:
    """Each setting's environment: torch threads, and the allocator (a preloaded library, or glibc tuned)."""
    threads = sorted({1, max_threads})
    out = [{"name": f"{t} thread{'s' * (t > 1)}, glibc malloc", "threads": t, "env": {}} for t in threads]
    # glibc serves blocks over its mmap threshold (at most 32 MiB) with fresh mmap()s, which the kernel
    # zero-fills page by page on every batch; this keeps them in the heap and the heap untrimmed
    out.append({"name": f"{max_threads} threads, glibc without mmap", "threads": max_threads,
                "env": {"GLIBC_TUNABLES": GLIBC_KEEP}})
    out.append({"name": f"{max_threads} threads, glibc as EDGETL_MALLOC=keep sets it", "threads": max_threads,
                "env": {"EDGETL_MALLOC": "keep"}})  # the same through mallopt, in the process
    for alloc, lib in ALLOCATORS.items():
        if path := find_library(lib):
            out.append({"name": f"{max_threads} threads, {alloc}", "threads": max_threads,
                        "env": {"LD_PRELOAD": path}})
    return out


def run_one(setting: dict, batches: int) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(setting["threads"]), **setting["env"]}
    out = subprocess.run([sys.executable, __file__, "--worker", str(setting["threads"]), "--batches", str(batches)],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{setting['name']}: worker failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=6, help="timed batches per loop and round")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_settings.json")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        from edgetl.host.allocator import keep_large_blocks

        # what ``edgetl train`` does at start: a no-op unless this setting's environment says EDGETL_MALLOC=keep
        if not keep_large_blocks() and os.environ.get("EDGETL_MALLOC") == "keep":
            raise SystemExit("EDGETL_MALLOC=keep was not applied on this system")
        print(json.dumps(worker(args.worker, args.batches)))
        return
    from edgetl.cpuinfo import cpu_info

    cpu = cpu_info()
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores, flags {' '.join(cpu['flags'])}; load {os.getloadavg()}")
    todo = settings(os.cpu_count() or 1)
    rates: dict[str, list[dict]] = {s["name"]: [] for s in todo}
    for r in range(args.rounds):
        for s in todo if r % 2 == 0 else todo[::-1]:
            rates[s["name"]].append(run_one(s, args.batches))
            print(f"round {r + 1}: {s['name']}: {rates[s['name']][-1]}", flush=True)
    loops = ("frozen_pass", "top_step", "peak_rss_mib")
    med = {n: {lp: statistics.median(x[lp] for x in runs) for lp in loops} for n, runs in rates.items()}
    base = next(s["name"] for s in todo  # torch's default: all cores, glibc as it comes
                if s["threads"] == (os.cpu_count() or 1) and not s["env"])
    print("\n| setting | frozen pass img/s | vs default | top step img/s | vs default | peak RSS MiB |\n"
          "|---|---|---|---|---|---|")
    for n, m in med.items():
        print(f"| {n} | {m['frozen_pass']:.1f} | {m['frozen_pass'] / med[base]['frozen_pass']:.2f}x "
              f"| {m['top_step']:.1f} | {m['top_step'] / med[base]['top_step']:.2f}x | {m['peak_rss_mib']:.0f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu": cpu, "load_after": os.getloadavg(), "rounds": args.rounds,
                                    "batches": args.batches, "baseline": base, "runs": rates, "median": med},
                                   indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
