"""Hook specifications of the ``edgetl`` pluggy project.

Every hook but :func:`edgetl_commands` is register-style: the plugin calls the
``register`` callback once per component it provides, and the core owns the
registry. ``register`` checks the component's type at once (a wrong type is a
:class:`TypeError` naming the plugin) and stamps it with the plugin's name.

All hooks are plain (not ``firstresult``): every plugin contributes. The core
calls each plugin's implementation separately so that a failing third-party
plugin can be reported and skipped without losing the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import click

    from edgetl.api import Backbone, Quantizer, Sink, Source, Strategy, Target

hookspec = pluggy.HookspecMarker("edgetl")
hookimpl = pluggy.HookimplMarker("edgetl")


@hookspec
def edgetl_backbones(register: Callable[["Backbone"], None]) -> None:
    """Register pretrained backbones (host side).

    :param register: call ``register(backbone)`` with an
        :class:`edgetl.api.Backbone` instance for each backbone provided. A
        family such as ``timm:*`` registers one component whose ``variant()``
        builds the member the user names.

    The plugin must not import torch at module level: ``build`` does that.
    """


@hookspec
def edgetl_strategies(register: Callable[["Strategy"], None]) -> None:
    """Register adaptation strategies (host side).

    :param register: call ``register(strategy)`` with an
        :class:`edgetl.api.Strategy` instance for each strategy provided.

    ``Strategy.fit(ctx)`` must return a :class:`edgetl.api.TrainedModel`
    holding everything it learned inside one module.
    """


@hookspec
def edgetl_quantizers(register: Callable[["Quantizer"], None]) -> None:
    """Register quantizers, keyed by (target, precision, method) (host side).

    :param register: call ``register(quantizer)`` with an
        :class:`edgetl.api.Quantizer` instance; its ``name`` is unique and its
        ``key`` (target, precision, method) says what it does. Its
        ``quantize(files, out_dir, ctx)`` receives an
        :class:`edgetl.api.QuantizeContext` and returns the written files.

    Accuracy is always measured after quantizing, by the core's gate.
    """


@hookspec
def edgetl_targets(register: Callable[["Target"], None]) -> None:
    """Register export targets (host: export; device: runtime).

    :param register: call ``register(target)`` with an
        :class:`edgetl.api.Target` instance. Its ``export(model, example,
        out_dir, spec)`` runs on the host (torch allowed) with an
        :class:`edgetl.api.ExportSpec`; its ``load(files, manifest, options)``
        runs on the device with the validated :class:`edgetl.manifest.Manifest`
        and must not import torch.
    """


@hookspec
def edgetl_sources(register: Callable[["Source"], None]) -> None:
    """Register camera/frame sources (device side, no torch).

    :param register: call ``register(source)`` with an
        :class:`edgetl.api.Source` instance; ``accepts(uri)`` says which URIs
        it opens.
    """


@hookspec
def edgetl_sinks(register: Callable[["Sink"], None]) -> None:
    """Register result sinks (device side, no torch).

    :param register: call ``register(sink)`` with an :class:`edgetl.api.Sink`
        instance; ``open(options)`` creates a writer for one pipeline.
    """


@hookspec
def edgetl_commands(cli: "click.Group") -> None:
    """Add commands to the ``edgetl`` command line (host and device).

    :param cli: the top-level click group; call ``cli.add_command(cmd)``.

    Keep the command module light: ``edgetl --help`` imports it. Import heavy
    libraries inside the command's function.
    """
