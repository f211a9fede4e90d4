"""``edgetl export RUN_DIR --format F``: a run into a gated, signed bundle."""

from __future__ import annotations

from pathlib import Path

import click

from edgetl.cli.common import (
    console,
    emit_json,
    inference_threads,
    info,
    json_option,
    long_step,
    threads_option,
)


def attempts_table(attempts: list[dict], torch_ms: float | None = None, title: str = "export") -> None:
    """The final table: one row per attempt (precision, gate, accuracy, agreement, diff, latency, size)."""
    from rich.table import Table

    from edgetl import fmt

    table = Table(title=title)
    for col in ("precision", "gate", "metric fp32 -> exported", "agreement [95% CI]", "max abs diff",
                "latency ms", "size"):
        table.add_column(col, justify="left" if col in ("precision", "gate") else "right")
    for a in attempts:
        if a.get("n") is None:
            table.add_row(f"{a['precision']}/{a['method']}", "error", "-", "-", "-", "-", "-")
            continue
        lo, hi = a["agreement_ci95"]
        table.add_row(
            f"{a['precision']}/{a['method']}", "pass" if a["passed"] else "FAIL",
            f"{fmt.prob(a['reference_metric'])} -> {fmt.prob(a['exported_metric'])}",
            f"{fmt.prob(a['agreement'])} [{fmt.prob(lo)}, {fmt.prob(hi)}]", fmt.tol(a["max_abs_diff"]),
            f"{a['latency_ms']:.2f}" if a.get("latency_ms") is not None else "-",
            f"{a['size_bytes'] / 1e6:.2f} MB" if a.get("size_bytes") else "-")
    if torch_ms is not None:
        table.caption = f"PyTorch eager FP32 on this machine: {torch_ms:.2f} ms (batch 1, median)"
    console().print(table)


def stages_table(stages: list[dict]) -> None:
    """Where the export's time went: one row per timed step, and the total."""
    from rich.table import Table

    table = Table(title="export steps")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for stage in stages:
        table.add_row(stage["stage"], f"{stage['seconds']:.1f}")
    table.add_row("total (timed steps)", f"{sum(s['seconds'] for s in stages):.1f}")
    console().print(table)


@click.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", help="Target plugin: onnx, openvino, tensorrt, … (default: the --target profile's).")
@click.option("--target", "target", type=click.Path(path_type=Path),
              help="Device profile, a shipped name (x86-openvino-cpu), one a target plugin ships, or a YAML "
                   "file: runtime settings, batch and fallback chain.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "int8"]), default="auto", show_default=True,
              help="auto walks the chain (int8 -> accuracy-aware int8 -> fp16 -> fp32) and keeps the first that passes.")
@click.option("--fallback", is_flag=True, help="If the asked precision fails the gate, continue down the chain.")
@click.option("--gate", type=float, default=1.0, show_default=True,
              help="Maximum drop of the task metric (accuracy/AUROC), in points.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=0.98, show_default=True,
              help="Minimum top-1 agreement with the FP32 model on the validation set.")
@click.option("--gate-slices", is_flag=True,
              help="Also gate every slice the run config's 'slices' name (e.g. each cell type): each must pass.")
@click.option("--calib-count", type=click.IntRange(1), default=300, show_default=True,
              help="Calibration images drawn from the training data, stratified by class.")
@click.option("--dynamic-batch", is_flag=True, help="Export with a dynamic batch dimension (default: static).")
@click.option("--model-version", help="Version string (default <run name>-<YYYYmmdd>-<short hash>).")
@click.option("--sign", type=click.Path(path_type=Path), help="Private key (NAME.key) to sign the bundle with.")
@click.option("--out", type=click.Path(path_type=Path), help="Bundle file (default <run name>-<format>.edgetl).")
@click.option("--latency-runs", type=click.IntRange(0), default=50, show_default=True,
              help="Batch-1 runs per attempt for the latency column (0 skips).")
@click.option("--quantize-budget", type=click.FloatRange(min=1), metavar="SECONDS",
              help="Wall-time budget of each accuracy-controlled quantization step (default 90); bounds the "
                   "search, never the gate.")
@click.option("--quantizer-option", "quantizer_option", multiple=True, metavar="QUANTIZER.KEY=VALUE",
              help="An option of one quantizer, e.g. openvino-int8-ptq.bias_correction=fast (repeatable; wins "
                   "over the profile's 'quantize' section; docs/export.md, \"Device profiles\").")
@threads_option
@json_option
def export_cmd(run_dir: Path, fmt: str, target: Path | None, precision: str, fallback: bool, gate: float,
               min_agreement: float, gate_slices: bool, calib_count: int, dynamic_batch: bool,
               model_version: str | None, sign: Path | None, out: Path | None, latency_runs: int,
               quantize_budget: float | None, quantizer_option: tuple[str, ...], threads: int | None, as_json: bool) -> None:
    """Export RUN_DIR, quantize, gate on the validation set, and write a signed bundle.

    Prints each stage with its time and size, then a table of every attempt.
    The exit status is non-zero, and no bundle is written, when nothing passes.
    """
    from edgetl.config import load_target_profile, resolve_profile
    from edgetl.errors import GateFailedError, UsageError
    from edgetl.host.export import parse_quantizer_options
    from edgetl.workflow.bundle import export_bundle

    inference_threads(threads)  # torch's threads for tracing, calibration and its latency column

    if target is not None:
        target = resolve_profile(target)
        fmt = fmt or load_target_profile(target).format
    if not fmt:
        raise UsageError("give --format (onnx, openvino, tensorrt, …) or --target PROFILE, e.g. x86-openvino-cpu")
    try:
        with long_step("export"):
            result = export_bundle(run_dir, format=fmt, target=target, precision=precision, fallback=fallback,
                                   gate=gate, min_agreement=min_agreement, gate_slices=gate_slices,
                                   calib_count=calib_count,
                                   dynamic_batch=dynamic_batch, model_version=model_version, sign=sign, out=out,
                                   latency_runs=latency_runs, quantize_budget_s=quantize_budget,
                                   quantizer_options=parse_quantizer_options(quantizer_option),
                                   log=info).result
    except GateFailedError as exc:
        attempts = getattr(exc, "attempts", [])
        if as_json:
            emit_json({"bundle": None, "passed": False, "error": str(exc), "attempts": attempts})
        else:
            attempts_table(attempts, title="export: nothing passed the gate")
        raise
    doc = result.document()
    if as_json:
        emit_json({**doc, "passed": True})
        return
    attempts_table(result.attempts, result.manifest.export.latency_ms.get("torch_fp32"),
                   title=f"{doc['name']} -> {doc['target']}")
    stages_table(result.stages)
    click.echo(f"bundle: {doc['bundle']} ({doc['size_bytes'] / 1e6:.2f} MB), {doc['precision']}/{doc['method']}, "
               f"version {doc['model_version']}, "
               + (f"signed by key {doc['key_id'][:16]}…" if doc["signed"] else "UNSIGNED (pass --sign KEY)"))
