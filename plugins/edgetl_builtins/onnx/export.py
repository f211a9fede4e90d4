"""Host half of the ONNX target: torch module -> checked ONNX file (torch, onnx).

The dynamo exporter (``torch.onnx.export(..., dynamo=True)``) is preferred: on
tf_efficientnet_lite0 it folds TF "same" padding into a 94-node graph that ONNX
Runtime runs about twice as fast as the legacy exporter's 595-node graph. If
it fails, the legacy TorchScript exporter is used and the reason is logged and
recorded. Every file passes ``onnx.checker``. The batch dimension is static
(the profile's batch, default 1) unless dynamic batch is asked for.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

from edgetl.errors import ExportError

log = logging.getLogger("edgetl.export.onnx")
OPSET = 20
LEGACY_OPSET = 17
INPUT, OUTPUT = "input", "output"
MAP = "map"  # the second output of an anomaly model: (N, 1, H, W) normalised anomaly map


def output_names(model: Any, example: Any) -> list[str]:
    """``["output"]``, or for a model returning a tuple ``["output", "map", "output_2", …]``."""
    import torch

    with torch.no_grad():
        out = model(example)
    if not isinstance(out, (tuple, list)):
        return [OUTPUT]
    return [OUTPUT, MAP, *[f"output_{i}" for i in range(2, len(out))]][:len(out)]


def export_onnx(model: Any, example: Any, path: Path, *, dynamic_batch: bool = False,
                report: dict[str, Any] | None = None) -> Path:
    """Export ``model`` (eval mode) for inputs like ``example`` (B, 3, H, W) to ``path``; check it.

    ``report`` (optional) receives ``exporter``, ``opset``, ``nodes`` and, on a
    fallback, ``fallback_reason``.
    """
    import onnx
    import torch

    report = report if report is not None else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    names = output_names(model, example)
    try:
        kwargs: dict[str, Any] = {}
        if dynamic_batch:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
        # the dynamo exporter prints progress on stdout; keep stdout for --json
        with contextlib.redirect_stdout(sys.stderr), torch.no_grad():
            torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=OPSET,
                              input_names=[INPUT], output_names=names, external_data=False,
                              verbose=False, **kwargs)
        report.update(exporter="dynamo", opset=OPSET)
    except Exception as exc:  # any exporter failure: fall back, say why
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        log.warning("dynamo ONNX export failed (%s); falling back to the legacy exporter", reason)
        path.unlink(missing_ok=True)
        try:
            with contextlib.redirect_stdout(sys.stderr), torch.no_grad():
                torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=LEGACY_OPSET,
                                  input_names=[INPUT], output_names=names, do_constant_folding=True,
                                  dynamic_axes={INPUT: {0: "batch"}, **{n: {0: "batch"} for n in names}}
                                  if dynamic_batch else None)
        except Exception as exc2:
            raise ExportError(f"ONNX export failed with both exporters: dynamo ({reason}); "
                              f"legacy ({type(exc2).__name__}: {exc2})") from exc2
        report.update(exporter="legacy", opset=LEGACY_OPSET, fallback_reason=reason)
    check_onnx(path)
    report["nodes"] = len(onnx.load(str(path), load_external_data=False).graph.node)
    return path


def check_onnx(path: Path) -> None:
    """``onnx.checker`` with shape inference; an invalid file is an ExportError naming it."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"{path}: ONNX checker rejected the model: {exc}") from exc
