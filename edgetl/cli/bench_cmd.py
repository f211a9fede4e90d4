"""``edgetl bench RUN_DIR|BUNDLE… [--data DIR] [--batch N] [--out DIR] [--json]``.

Only click at module level; the measuring lives in :mod:`edgetl.bench` (torch-free,
so a bundle-only bench runs on a device). The table goes to stdout, progress
to stderr; with ``--json`` stdout holds exactly the bench document.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edgetl.cli.common import emit_json, info, json_option


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _threads(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def render_table(doc: dict[str, Any]) -> Any:
    """A ``rich`` table of the bench document, one row per model, the reference first."""
    from rich.table import Table

    title = (f"edgetl bench: batch {doc['batch']}, {doc['runs']} runs after {doc['warmup']} warm-up, "
             f"{_threads(doc['threads'])}, {doc['host']['machine']} ({doc['host']['usable_cpus']} CPUs)")
    table = Table(title=title, caption=f"ratios vs the first model: {doc['reference']}"
                  + (f"; accuracy on {doc['data']}" if doc["data"] else ""))
    for name, justify in (("model", "left"), ("format", "left"), ("thr", "right"), ("size MB", "right"),
                          ("median ms", "right"), ("p90 ms", "right"), ("p99 ms", "right"),
                          ("img/s", "right"), ("speed-up", "right"), ("acc", "right"),
                          ("bal acc", "right"), ("agree", "right")):
        table.add_column(name, justify=justify)
    for row in doc["models"]:
        lat = row["latency_ms"]
        table.add_row(
            f"{row['name']}\n[dim]{row['path']}[/dim]",
            f"{row['format']} {row['precision']}" + ("" if row["method"] in ("default", "eager")
                                                     else f"\n[dim]{row['method']}[/dim]"),
            "–" if row["threads"] is None else str(row["threads"]),
            f"{row['model_bytes'] / 1e6:.2f}",
            f"{lat['median']:.2f}", f"{lat['p90']:.2f}", f"{lat['p99']:.2f}",
            f"{row['throughput_ips']:.1f}", _fmt(row["speedup"], ".2f") + "×",
            _fmt(row["accuracy"], ".4f"), _fmt(row["balanced_accuracy"], ".4f"), _fmt(row["agreement"], ".4f"))
    return table


def write_outputs(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """``bench.json`` and, where matplotlib is installed (a host), ``latency.png``: a box per model."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "bench.json"]
    written[0].write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    try:
        import matplotlib
    except ImportError:
        info("matplotlib is not installed: no latency.png (pip install 'edgetl[train]' for plots)")
        return written
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(doc["models"]) + 2), 4))
    ax.boxplot([m["latency_ms"]["samples"] for m in doc["models"]], whis=(1, 99), showfliers=False)
    ax.set_xticks(range(1, len(doc["models"]) + 1),
                  [f"{m['name']}\n{m['format']} {m['precision']}" for m in doc["models"]], fontsize=8)
    ax.set_ylabel(f"latency per batch of {doc['batch']} (ms)")
    ax.set_title(f"{doc['runs']} runs, {_threads(doc['threads'])}, {doc['host']['machine']}; "
                 "box: quartiles, whiskers: p1-p99", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    written.append(out_dir / "latency.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    return written


@click.command("bench", short_help="Latency, size and accuracy of runs and bundles, side by side.")
@click.argument("models", nargs=-1, required=True, type=click.Path(), metavar="RUN_DIR|BUNDLE...")
@click.option("--data", type=click.Path(), default=None,
              help="A labelled ImageFolder (e.g. a val or test split): adds accuracy and agreement.")
@click.option("--batch", type=int, default=1, show_default=True, help="Model inputs per timed call.")
@click.option("--runs", type=int, default=50, show_default=True, help="Timed calls per model.")
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed calls before them.")
@click.option("--threads", type=int, default=None,
              help="CPU threads for every runtime (default: the CPUs this process may use).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Also write bench.json (+ latency.png) into this folder.")
@json_option
def bench_command(models: tuple[str, ...], data: str | None, batch: int, runs: int, warmup: int,
                  threads: int | None, out: str | None, as_json: bool) -> None:
    """Measure runs and bundles side by side on this machine: latency, throughput, size, accuracy.

    The first model is the reference: speed-up, size ratio and top-1 agreement
    are against it. A run directory runs in PyTorch eager, a bundle in its own
    runtime, all under the same thread count.

    \b
      edgetl bench runs/elpv-lite0 elpv-lite0.edgetl --data data/elpv/test
      edgetl bench a.edgetl b.edgetl --batch 8 --out bench/ --json
    """
    from edgetl.bench import BenchOptions, run_bench

    options = BenchOptions(batch=batch, runs=runs, warmup=warmup, threads=threads,
                           data=Path(data) if data else None, progress=info)
    doc = run_bench(list(models), options)
    if out:
        for path in write_outputs(doc, Path(out)):
            info(f"wrote {path}")
    if as_json:
        emit_json(doc)
        return
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # a pipe or a file: no terminal width to fit, keep every figure whole
        console = Console(width=200)
    console.print(render_table(doc))
