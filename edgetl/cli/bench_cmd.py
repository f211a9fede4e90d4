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

from edgetl.cli.common import console, emit_json, info, json_option, long_step


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def ms(value: float) -> str:
    """Milliseconds to 3 significant digits, without an exponent (6,700 not 6.7e+03)."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _threads(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def speedup_cell(row: dict[str, Any]) -> str:
    """The speed-up, or "no significant difference" when the medians' 95% CIs overlap."""
    if row["speedup"] is None:
        return "–"
    if row.get("speedup_significant") is False:
        return "no significant difference"
    return f"{row['speedup']:.2f}×"


def render_table(doc: dict[str, Any]) -> Any:
    """A ``rich`` table of the bench document, one row per model, the reference first."""
    from rich.table import Table

    how = "interleaved" if doc.get("interleaved") else "one model at a time"
    title = (f"edgetl bench: batch {doc['batch']}, {doc['runs']} runs after {doc['warmup']} warm-up ({how}), "
             f"{_threads(doc['threads'])}, {doc['host']['machine']} ({doc['host']['usable_cpus']} CPUs)")
    caption = (f"speed-up vs the first model ({doc['reference']}), shown only where the 95% CIs of the "
               "medians do not overlap" + (f"; accuracy on {doc['data']}" if doc["data"] else ""))
    table = Table(title=title, caption=caption)
    for name, justify in (("model", "left"), ("format", "left"), ("thr", "right"), ("size MB", "right"),
                          ("median ms", "right"), ("p10–p90 ms", "right"), ("img/s", "right"),
                          ("speed-up", "right"), ("acc", "right"), ("bal acc", "right"), ("agree", "right")):
        table.add_column(name, justify=justify)
    for row in doc["models"]:
        lat = row["latency_ms"]
        spread = f"{ms(lat['p10'])}–{ms(lat['p90'])}" + (" [bold red]unstable[/]" if row.get("unstable") else "")
        table.add_row(
            f"{row['name']}\n[dim]{row['path']}[/dim]",
            f"{row['format']} {row['precision']}" + ("" if row["method"] in ("default", "eager")
                                                     else f"\n[dim]{row['method']}[/dim]"),
            "–" if row["threads"] is None else str(row["threads"]),
            f"{row['model_bytes'] / 1e6:.2f}", ms(lat["median"]), spread,
            f"{row['throughput_ips']:.3g}", speedup_cell(row),
            _fmt(row["accuracy"], ".4f"), _fmt(row["balanced_accuracy"], ".4f"), _fmt(row["agreement"], ".4f"))
    return table


def write_outputs(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """``bench.json`` and, where matplotlib is installed (a host), ``latency.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "bench.json"]
    written[0].write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    try:
        import matplotlib
    except ImportError:
        info("matplotlib is not installed: no latency.png (pip install 'edgetl[train]' for plots)")
        return written
    matplotlib.use("Agg")
    written.append(out_dir / "latency.png")
    plot_latency(doc, written[-1])
    return written


def plot_latency(doc: dict[str, Any], path: Path) -> None:
    """A box per model on a log axis (one slow outlier must not flatten the rest), median written on it."""
    import matplotlib.pyplot as plt

    models = doc["models"]
    fig, ax = plt.subplots(figsize=(max(5.0, 2.0 * len(models) + 1.5), 4.5))
    ax.boxplot([m["latency_ms"]["samples"] for m in models], whis=(10, 90), showfliers=True,
               flierprops={"markersize": 2, "alpha": 0.4})
    ax.set_yscale("log")
    labels = [f"{m['format']} {m['precision']}\n{_short(m['name'])}" for m in models]
    ax.set_xticks(range(1, len(models) + 1), labels, fontsize=8, rotation=20 if len(models) > 3 else 0,
                  ha="right" if len(models) > 3 else "center")
    for x, m in enumerate(models, start=1):
        ax.annotate(f"{ms(m['latency_ms']['median'])} ms", (x, m["latency_ms"]["median"]), xytext=(14, 0),
                    textcoords="offset points", fontsize=7, va="center")
    ax.set_ylabel(f"latency per batch of {doc['batch']} (ms, log scale)")
    how = "interleaved" if doc.get("interleaved") else "one model at a time"
    ax.set_title(f"{doc['runs']} runs ({how}), {_threads(doc['threads'])}, {doc['host']['machine']}\n"
                 "box: quartiles, whiskers: p10-p90, dots: beyond", fontsize=9)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _short(name: str, width: int = 22) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


@click.command("bench", short_help="Latency, size and accuracy of runs and bundles, side by side.")
@click.argument("models", nargs=-1, required=True, type=click.Path(), metavar="RUN_DIR|BUNDLE...")
@click.option("--data", type=click.Path(), default=None,
              help="A labelled ImageFolder (e.g. a val or test split): adds accuracy and agreement.")
@click.option("--batch", type=int, default=1, show_default=True, help="Model inputs per timed call.")
@click.option("--runs", type=int, default=50, show_default=True, help="Timed calls per model.")
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed calls before them.")
@click.option("--threads", type=int, default=None,
              help="CPU threads for every runtime (default: OMP_NUM_THREADS if set, else the CPUs this process "
                   "may use less those other processes keep busy).")
@click.option("--interleave/--no-interleave", default=True, show_default=True,
              help="Time the models in rounds, one call each (fair under a changing load), or one block each.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Also write bench.json (+ latency.png) into this folder.")
@json_option
def bench_command(models: tuple[str, ...], data: str | None, batch: int, runs: int, warmup: int,
                  threads: int | None, interleave: bool, out: str | None, as_json: bool) -> None:
    """Measure runs and bundles side by side on this machine: latency, throughput, size, accuracy.

    The first model is the reference: speed-up, size ratio and top-1 agreement
    are against it. A run directory runs in PyTorch eager, a bundle in its own
    runtime, all under the same thread count.

    \b
      edgetl bench runs/elpv-lite0 elpv-lite0.edgetl --data data/elpv/test
      edgetl bench a.edgetl b.edgetl --batch 8 --out bench/ --json
    """
    from edgetl.bench import BenchOptions, run_bench
    from edgetl.threads import configure

    threads, source = configure(threads)  # passive OpenMP waits before torch loads
    options = BenchOptions(batch=batch, runs=runs, warmup=warmup, threads=threads, threads_source=source,
                           data=Path(data) if data else None, interleave=interleave, progress=info)
    with long_step("bench"):
        doc = run_bench(list(models), options)
    if out:
        for path in write_outputs(doc, Path(out)):
            info(f"wrote {path}")
    if as_json:
        emit_json(doc)
    else:
        console().print(render_table(doc))
    for warning in doc["warnings"]:
        console(stderr=True).print(f"[bold red]WARNING: unstable timings[/]: {warning}", highlight=False)
