"""The plugin manager: loads built-in then third-party plugins, owns the registry.

Rules (DESIGN.md, "Loading and plugin errors"):

- :data:`DEFAULT_PLUGINS` load first, in order, always. A broken built-in is a
  bug: :class:`PluginError` with the cause chained.
- Then the entry-point group ``edgetl``. ``EDGETL_LOAD_PLUGINS=a,b`` limits
  which entry points load; set but empty means none (tests run hermetic).
- A third-party plugin that raises (on import or in a hook) or registers a
  clashing name is reported, skipped and listed as ``broken``; the rest works.
- A plugin whose components need a missing optional module is ``unavailable``,
  with the extra to install.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from edgetl import hookspecs
from edgetl.api import COMPONENT_TYPES, Component
from edgetl.errors import PluginError, UnknownComponentError

DEFAULT_PLUGINS: tuple[str, ...] = (
    "edgetl_stdio",
    "edgetl_timm",
    "edgetl_camera",
    "edgetl_sinks",
    "edgetl_onnx",
    "edgetl_strategies",
    "edgetl_anomaly",
    "edgetl_openvino",
    "edgetl_tensorrt",
)

ENTRY_POINT_GROUP = "edgetl"
REGISTER_HOOKS = {
    "backbone": "edgetl_backbones", "strategy": "edgetl_strategies",
    "quantizer": "edgetl_quantizers", "target": "edgetl_targets",
    "source": "edgetl_sources", "sink": "edgetl_sinks",
}


class PluginWarning(UserWarning):
    """A third-party plugin was skipped; the message says which and why."""


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin, as ``edgetl plugins list`` shows it."""

    name: str
    version: str
    source: str  # builtin | third-party
    status: str = "ok"  # ok | unavailable | broken
    reason: str | None = None
    hooks: list[str] = field(default_factory=list)
    components: list[Component] = field(default_factory=list)
    module: str | None = None
    dist: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version, "source": self.source,
            "status": self.status, "reason": self.reason, "hooks": sorted(self.hooks),
            "components": [{"kind": c.kind, "name": c.name} for c in self.components],
        }


def _selected_entry_points() -> list[metadata.EntryPoint]:
    eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    wanted = os.environ.get("EDGETL_LOAD_PLUGINS")
    if wanted is None:
        return eps
    names = {n.strip() for n in wanted.split(",") if n.strip()}
    return [ep for ep in eps if ep.name in names]


def _version() -> str:
    from edgetl import __version__

    return __version__


class PluginManager:
    """Loads plugins once and answers "which component is called X?"."""

    def __init__(self, load_third_party: bool = True):
        self.pm = pluggy.PluginManager("edgetl")
        self.pm.add_hookspecs(hookspecs)
        if os.environ.get("EDGETL_TRACE_HOOKS"):
            self.pm.trace.root.setwriter(lambda msg: sys.stderr.write(msg))
            self.pm.enable_tracing()
        self.plugins: dict[str, PluginInfo] = {}
        self.registry: dict[str, dict[str, Component]] = {k: {} for k in COMPONENT_TYPES}
        for modname in DEFAULT_PLUGINS:
            self._load_builtin(modname)
        if load_third_party:
            for ep in _selected_entry_points():
                self._load_entry_point(ep)

    # -- loading -------------------------------------------------------
    def _load_builtin(self, modname: str) -> None:
        try:
            module = importlib.import_module(modname)
        except Exception as exc:
            raise PluginError(f'Error importing built-in plugin "{modname}": {exc}') from exc
        info = PluginInfo(name=modname, version=_version(), source="builtin", module=modname)
        self._register(module, info, fatal=True)

    def _load_entry_point(self, ep: metadata.EntryPoint) -> None:
        dist = getattr(ep, "dist", None)
        info = PluginInfo(name=ep.name, version=dist.version if dist else "?",
                          source="third-party", module=ep.value,
                          dist=dist.metadata["Name"] if dist else None)
        if ep.name in self.plugins:
            self._broken(info, f"plugin name '{ep.name}' is already taken by "
                               f"{self.plugins[ep.name].module}")
            return
        try:
            module = ep.load()
        except Exception as exc:
            self._broken(info, f'Error importing plugin "{ep.name}": {type(exc).__name__}: {exc}', exc)
            return
        self._register(module, info, fatal=False)

    def _broken(self, info: PluginInfo, reason: str, cause: BaseException | None = None) -> None:
        info.status, info.reason, info.components = "broken", reason, []
        key = info.name
        while key in self.plugins and self.plugins[key] is not info:  # never hide the one loaded first
            key += "'"
        self.plugins[key] = info
        warning = PluginWarning(f"skipping plugin '{info.name}': {reason}")
        warning.__cause__ = cause
        warnings.warn(warning, stacklevel=3)

    def _register(self, module: Any, info: PluginInfo, fatal: bool) -> None:
        """Register ``module`` with pluggy, then collect its components under its name."""
        try:
            self.pm.register(module, name=info.name)
            info.hooks = [h.name for h in self.pm.get_hookcallers(module) or []]
            found = self._collect(module, info)
        except Exception as exc:
            if fatal:
                raise PluginError(f'Built-in plugin "{info.name}" failed: {exc}') from exc
            if self.pm.is_registered(module):
                self.pm.unregister(module)
            self._broken(info, f"{type(exc).__name__}: {exc}", exc)
            return
        for comp in found:  # commit only once the whole plugin registered cleanly
            self.registry[comp.kind][comp.name] = comp
        info.components = found
        missing = sorted({m for c in found for m in c.missing_modules()})
        if missing:
            extras = sorted({c.extra for c in found if c.extra and c.missing_modules()})
            hint = ", ".join(f"pip install 'edgetl[{e}]'" for e in extras) or "install " + ", ".join(missing)
            info.status, info.reason = "unavailable", f"missing {', '.join(missing)}; {hint}"
        self.plugins[info.name] = info

    def _collect(self, module: Any, info: PluginInfo) -> list[Component]:
        found: list[Component] = []
        for kind, hook in REGISTER_HOOKS.items():
            impl = getattr(module, hook, None)
            if impl is None:
                continue
            expected = COMPONENT_TYPES[kind]

            def register(component: Any, _kind=kind, _expected=expected, _hook=hook) -> None:
                if not isinstance(component, _expected):
                    raise TypeError(f"plugin '{info.name}' registered {component!r} with {_hook}, "
                                    f"expected an instance of edgetl.api.{_expected.__name__}")
                if not component.name:
                    raise TypeError(f"plugin '{info.name}' registered a {_kind} without a name")
                taken = self.registry[_kind].get(component.name) or next(
                    (c for c in found if c.kind == _kind and c.name == component.name), None)
                if taken is not None:
                    raise PluginError(f"{_kind} name '{component.name}' clashes: already registered "
                                      f"by plugin '{taken.plugin}' ({type(taken).__name__}), "
                                      f"again by '{info.name}' ({type(component).__name__})")
                component.plugin = info.name
                found.append(component)

            impl(register=register)
        return found

    # -- queries -------------------------------------------------------
    def get(self, kind: str, name: str) -> Component:
        """The component of ``kind`` called ``name``, or a "did you mean" error."""
        table = self.registry[kind]
        if name in table:
            return table[name]
        if ":" in name:
            family = table.get(name.split(":", 1)[0] + ":*")
            if family is not None:
                return family.variant(name.split(":", 1)[1])
        close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(sorted(table)) or "none"
        raise UnknownComponentError(f"unknown {kind} '{name}'{hint} (known: {known})")

    def all(self, kind: str) -> list[Component]:
        return list(self.registry[kind].values())

    def quantizer(self, target: str, precision: str, method: str) -> Component | None:
        return next((q for q in self.registry["quantizer"].values()
                     if q.key == (target, precision, method)), None)

    def add_commands(self, cli: Any) -> None:
        """Let every plugin add click commands; a failing third-party one is reported and skipped."""
        for impl in self.pm.hook.edgetl_commands.get_hookimpls():
            try:
                impl.function(cli=cli)
            except Exception as exc:
                info = self.plugins.get(impl.plugin_name)
                if info is None or info.source == "builtin":
                    raise
                self._broken(info, f"edgetl_commands failed: {type(exc).__name__}: {exc}", exc)


_MANAGER: PluginManager | None = None


def get_manager() -> PluginManager:
    """The process-wide plugin manager, loaded on first use."""
    global _MANAGER
    if _MANAGER is None:
        _MANAGER = PluginManager()
    return _MANAGER


def reset_manager() -> None:
    """Forget the loaded plugins (tests; after ``plugins install``)."""
    global _MANAGER
    _MANAGER = None
