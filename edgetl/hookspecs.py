"""Hook specifications of the ``edgetl`` pluggy project.

Every hook but :func:`edgetl_commands` is register-style: the plugin calls the
``register`` callback once per component it provides, and the core owns the
registry. ``register`` checks the component's type at once (a wrong type is a
:class:`TypeError` naming the plugin) and stamps it with the plugin's name.

A hook implementation must be marked with :data:`hookimpl`; an unmarked
``edgetl_*`` function is not a hook, and its plugin is reported instead of
half-loaded. All hooks are plain (not ``firstresult``): every plugin
contributes. The core calls them through pluggy one plugin at a time, so
``EDGETL_TRACE_HOOKS=1`` traces every call and a failing third-party plugin is
reported and skipped without losing the others.

These docstrings are the hook reference: docs/plugins.md carries them
verbatim, and a test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import click

    from edgetl.api import Backbone, Logger, Quantizer, Sink, Source, Strategy, Target

__all__ = [
    "hookimpl", "edgetl_backbones", "edgetl_strategies", "edgetl_quantizers", "edgetl_targets",
    "edgetl_sources", "edgetl_sinks", "edgetl_loggers", "edgetl_commands",
]


hookspec = pluggy.HookspecMarker("edgetl")
hookimpl = pluggy.HookimplMarker("edgetl")


@hookspec
def edgetl_backbones(register: Callable[["Backbone"], None]) -> None:
    """Register pretrained backbones (host side).

    :param register: call ``register(backbone)`` with an
        :class:`edgetl.api.Backbone` instance for each backbone provided. A
        family such as ``timm:*`` registers one component whose ``variant()``
        builds the member the user names.

    A backbone declares its ``input`` (``InputSpec``: size, mean, std, colour
    order, resize mode) and its ``feature_dim``, and implements
    ``build(pretrained=True, weights=None)`` returning a ``torch.nn.Module``
    from a normalised ``(N, 3, H, W)`` batch to pooled ``(N, D)`` features,
    ``layer_groups(module)`` (stem to head) and ``feature_maps(module, x)``.
    The plugin must not import torch at module level: ``build`` does that.
    """


@hookspec
def edgetl_strategies(register: Callable[["Strategy"], None]) -> None:
    """Register adaptation strategies (host side).

    :param register: call ``register(strategy)`` with an
        :class:`edgetl.api.Strategy` instance for each strategy provided.

    ``Strategy.fit(ctx)`` receives a ``FitContext`` (the backbone and its
    built module, the data, labels, options, config, torch device, progress and
    history callbacks; in a ``--from`` run, the previous run) and returns a
    :class:`edgetl.api.TrainedModel` holding everything it learned inside one
    module.
    """


@hookspec
def edgetl_quantizers(register: Callable[["Quantizer"], None]) -> None:
    """Register quantizers, keyed by (target, precision, method) (host side).

    :param register: call ``register(quantizer)`` with an
        :class:`edgetl.api.Quantizer` instance; its ``name`` is unique and its
        ``key`` (target, precision, method), e.g. ``("onnx", "int8", "ptq")``,
        says what it does.

    ``quantize(files, out_dir, ctx)`` turns the target's FP32 files into the
    lower precision, given a typed :class:`edgetl.api.QuantizeContext`
    (calibration batches, validation set, gate settings, progress, time
    budget, model facts), and returns the written files. Accuracy is always
    measured after quantizing, by the core's gate.
    """


@hookspec
def edgetl_targets(register: Callable[["Target"], None]) -> None:
    """Register export targets (host: export; device: runtime).

    :param register: call ``register(target)`` with an
        :class:`edgetl.api.Target` instance. Its ``export`` runs on the host
        (torch allowed); its ``load`` runs on the device and must not import
        torch.

    ``export(model, example, out_dir, spec)`` writes the FP32 files, given an
    :class:`edgetl.api.ExportSpec`; ``load(files, manifest, options)``
    receives the validated :class:`edgetl.manifest.Manifest` and returns an
    ``edgetl.api.Runtime`` whose ``predict`` maps ``(N, 3, H, W)`` float32 to
    the model output.
    ``precisions`` and ``fallback`` describe the chain ``--precision auto``
    walks.
    """


@hookspec
def edgetl_sources(register: Callable[["Source"], None]) -> None:
    """Register camera/frame sources (device side, no torch).

    :param register: call ``register(source)`` with an
        :class:`edgetl.api.Source` instance; ``accepts(uri)`` says which URIs
        it opens.

    URIs are a camera index, ``rtsp://``, ``http://``, a video file, an image
    folder or ``gst:``. ``open(uri, options)`` returns a ``FrameStream``
    yielding ``Frame`` objects (BGR uint8 image, timestamp, index).
    """


@hookspec
def edgetl_sinks(register: Callable[["Sink"], None]) -> None:
    """Register result sinks (device side, no torch).

    :param register: call ``register(sink)`` with an :class:`edgetl.api.Sink`
        instance; ``open(options)`` creates a writer for one pipeline.

    The writer's ``write(result, frame)`` receives each pipeline result. For an
    anomaly model whose runtime gives a map, ``frame.anomaly_map`` holds it (from
    the same inference as the score: ``(h, w)`` float32 in 0..1, 0.5 = threshold,
    covering the whole frame, zeros outside a pipeline ROI; None for other models
    and for tiled inputs); the result document itself never carries the map.
    Draw it with ``edgetl.annotate.annotate(frame.image, result, heatmap=frame.anomaly_map)``.
    """


@hookspec
def edgetl_loggers(register: Callable[["Logger"], None]) -> None:
    """Register experiment trackers (host side, training and export).

    :param register: call ``register(logger)`` with an
        :class:`edgetl.api.Logger` instance. A run uses it when its config
        names it under ``loggers``; ``start(run_name, params, run_dir, options)``
        returns an :class:`edgetl.api.LoggerRun` that receives the history rows,
        figures, the run directory and, later, export results.

    Import the tracking library inside ``start``: ``edgetl --help`` imports
    the plugin module.
    """


@hookspec
def edgetl_commands(cli: "click.Group") -> None:
    """Add commands to the ``edgetl`` command line (host and device).

    :param cli: the top-level click group; call ``cli.add_command(cmd)``.

    Keep the command module light: ``edgetl --help`` imports it. Import heavy
    libraries inside the command's function.
    """
