"""The plugin manager: loads built-in then third-party plugins, owns the registry.

Rules:

- :data:`DEFAULT_PLUGINS` load first, in order, always. A broken built-in is a
  bug: :class:`PluginError` with the cause chained.
- Then the entry-point group ``edgetl``. ``EDGETL_LOAD_PLUGINS=a,b`` limits
  which entry points load; set but empty means none (tests run hermetic). A
  name there that matches no entry point is warned about (a typo loads nothing).
- Every hook is called through pluggy's dispatcher, one plugin at a time
  (:meth:`PluginManager.call_hook`), so ``EDGETL_TRACE_HOOKS=1`` traces it and
  one failing plugin is reported alone. Only functions marked ``@hookimpl``
  are hooks; an unmarked ``edgetl_*`` function is reported, never guessed at.
- A third-party plugin that raises (on import or in a hook) or registers a
  clashing name is reported, skipped and listed as ``broken``; the rest works.
- A component whose optional modules are missing is unavailable, with its
  install hint; the plugin is ``partial`` when only some of its components are,
  ``unavailable`` when all are.
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
from edgetl.errors import PluginError, UnknownComponentError, did_you_mean

__all__ = [
    "DEFAULT_PLUGINS", "ENTRY_POINT_GROUP", "PluginManager", "PluginInfo", "PluginWarning",
    "get_manager",
]


DEFAULT_PLUGINS: tuple[str, ...] = (
    "edgetl_builtins.stdio",
    "edgetl_builtins.timm",
    "edgetl_builtins.camera",
    "edgetl_builtins.sinks",
    "edgetl_builtins.line",
    "edgetl_builtins.onnx",
    "edgetl_builtins.strategies",
    "edgetl_builtins.transfer",
    "edgetl_builtins.anomaly",
    "edgetl_builtins.openvino",
    "edgetl_builtins.tensorrt",
    "edgetl_builtins.loggers",
)

ENTRY_POINT_GROUP = "edgetl"
"""The entry-point group an installed plugin registers under (docs/plugins.md, how plugins are found)."""
REGISTER_HOOKS = {
    "backbone": "edgetl_backbones", "strategy": "edgetl_strategies",
    "quantizer": "edgetl_quantizers", "target": "edgetl_targets",
    "source": "edgetl_sources", "sink": "edgetl_sinks", "logger": "edgetl_loggers",
}
HOOK_NAMES = tuple(sorted(n for n in vars(hookspecs) if n.startswith("edgetl_")))
STATUSES = ("ok", "partial", "unavailable", "broken")


class PluginWarning(UserWarning):
    """A third-party plugin was skipped; the message says which and why."""


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin, as ``edgetl plugins list`` shows it."""

    name: str
    version: str
    source: str  # builtin | third-party
    status: str = "ok"  # one of STATUSES
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

    def provider(self) -> str:
        """Who ships this plugin, for messages: ``edgetl (built-in)`` or ``distribution NAME VERSION``."""
        if self.source == "builtin":
            return "edgetl (built-in)"
        return f"distribution {self.dist} {self.version}" if self.dist else f"module {self.module}"


def install_hint(component: Component) -> str:
    """How to get a component's missing modules: its own hint, else the edgetl extra, else the modules."""
    if component.install_hint:
        return component.install_hint
    if component.extra:
        return f"pip install 'edgetl[{component.extra}]'"
    return "install " + ", ".join(component.missing_modules() or component.requires)


def _selected_entry_points() -> list[metadata.EntryPoint]:
    eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    wanted = os.environ.get("EDGETL_LOAD_PLUGINS")
    if wanted is None:
        return eps
    names = [n.strip() for n in wanted.split(",") if n.strip()]
    known = {ep.name for ep in eps}
    for name in names:
        if name not in known:
            why = ("it is a built-in plugin, which always loads" if name in DEFAULT_PLUGINS else
                   did_you_mean(name, sorted(known)).removeprefix("; ") or
                   f"installed: {', '.join(sorted(known)) or 'none'}")
            warnings.warn(PluginWarning(f"EDGETL_LOAD_PLUGINS names '{name}', which matches no entry point "
                                        f"in group '{ENTRY_POINT_GROUP}' ({why})"), stacklevel=3)
    return [ep for ep in eps if ep.name in names]


def _version() -> str:
    from edgetl import __version__

    return __version__


def _unmarked_hooks(module: Any) -> list[str]:
    """``edgetl_*`` hook functions in ``module`` that lack ``@hookimpl`` (pluggy would ignore them)."""
    marker = f"{hookspecs.hookimpl.project_name}_impl"
    return [name for name in HOOK_NAMES
            if callable(getattr(module, name, None)) and getattr(module, name) is not getattr(hookspecs, name)
            and not hasattr(getattr(module, name), marker)]


class PluginManager:
    """Loads plugins once and answers "which component is called X?"."""

    def __init__(self, load_third_party: bool = True):
        self.pm = pluggy.PluginManager("edgetl")
        self.pm.add_hookspecs(hookspecs)
        self.trace = os.environ.get("EDGETL_TRACE_HOOKS", "") not in ("", "0", "false")
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
            first = self.plugins[ep.name]
            self._broken(info, f"plugin name '{ep.name}' (from {info.provider()}) is already taken by "
                               f"{first.module} from {first.provider()}")
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
            unmarked = _unmarked_hooks(module)
            if unmarked:
                verb = "is" if len(unmarked) == 1 else "are"
                raise PluginError(f"{', '.join(unmarked)} in {module.__name__} {verb} not marked @hookimpl, so "
                                  "not a hook (add 'from edgetl.hookspecs import hookimpl' and decorate it)")
            self.pm.register(module, name=info.name)
            info.hooks = sorted(h.name for h in self.pm.get_hookcallers(module) or [])
            self._check_known(info)
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
        self._set_availability(info)
        self.plugins[info.name] = info

    def _check_known(self, info: PluginInfo) -> None:
        """A ``@hookimpl`` for a hook edgetl does not have is a typo: say which, and the nearest hook."""
        for name in info.hooks:
            if name not in HOOK_NAMES:
                close = difflib.get_close_matches(name, HOOK_NAMES, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise PluginError(f"@hookimpl {name} is not an edgetl hook{hint}")

    @staticmethod
    def _set_availability(info: PluginInfo) -> None:
        """``partial`` when some components miss optional modules, ``unavailable`` when all do."""
        missing = [c for c in info.components if c.missing_modules()]
        if not missing:
            return
        info.status = "unavailable" if len(missing) == len(info.components) else "partial"
        info.reason = "; ".join(f"{c.kind} {c.name} needs {', '.join(c.missing_modules())} "
                                f"({install_hint(c)})" for c in missing)

    def call_hook(self, plugin: Any, hook: str, **kwargs: Any) -> list[Any]:
        """Call ``hook`` of one registered plugin through pluggy (traced, validated, isolated)."""
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        caller = self.pm.subset_hook_caller(hook, remove_plugins=others)
        if not self.trace:
            return caller(**kwargs)
        return self._traced(caller, self.pm.get_name(plugin) or repr(plugin), hook, kwargs)

    @staticmethod
    def _traced(caller: Any, plugin: str, hook: str, kwargs: dict[str, Any]) -> list[Any]:
        """``EDGETL_TRACE_HOOKS=1``: one line per hook call on stderr, naming the plugin and what it gave
        (the components it registered, the commands it added, or the hook's return value)."""
        import time

        given: list[str] = []
        if "register" in kwargs:
            register = kwargs["register"]

            def recording(component: Any) -> None:
                given.append(f"{getattr(component, 'kind', '?')} '{getattr(component, 'name', '?')}'")
                register(component)

            kwargs = {**kwargs, "register": recording}
        before = set(getattr(kwargs.get("cli"), "commands", {}) or {})
        t = time.perf_counter()
        sys.stderr.write(f"edgetl hook {hook} -> plugin {plugin}\n")
        try:
            result = caller(**kwargs)
        except Exception as exc:
            sys.stderr.write(f"edgetl hook {hook} <- plugin {plugin}: raised {type(exc).__name__}: {exc}\n")
            raise
        ms = (time.perf_counter() - t) * 1000
        if "register" in kwargs:
            summary = f"registered {len(given)}: {', '.join(given)}" if given else "registered nothing"
        elif "cli" in kwargs:
            added = sorted(set(kwargs["cli"].commands) - before)
            summary = f"added commands {', '.join(added)}" if added else "added no command"
        else:
            summary = f"returned {result!r}"[:200]
        sys.stderr.write(f"edgetl hook {hook} <- plugin {plugin}: {summary} ({ms:.1f} ms)\n")
        return result

    def _collect(self, module: Any, info: PluginInfo) -> list[Component]:
        """Call each register-style hook of ``module``; every failing hook is named in one error."""
        found: list[Component] = []
        failed: list[tuple[str, Exception]] = []
        for kind, hook in REGISTER_HOOKS.items():
            if hook in info.hooks:
                try:
                    self.call_hook(module, hook, register=self._registrar(kind, hook, info, found))
                except Exception as exc:
                    failed.append((hook, exc))
        if len(failed) == 1:
            raise failed[0][1]
        if failed:
            raise PluginError("; ".join(f"{hook}: {type(exc).__name__}: {exc}" for hook, exc in failed)) \
                from failed[0][1]
        return found

    def _registrar(self, kind: str, hook: str, info: PluginInfo, found: list[Component]):
        """The ``register`` callback handed to one plugin's ``hook``: checks type, name and clashes."""
        expected = COMPONENT_TYPES[kind]

        def register(component: Any) -> None:
            if not isinstance(component, expected):
                raise TypeError(f"plugin '{info.name}' registered {component!r} with {hook}, "
                                f"expected an instance of edgetl.api.{expected.__name__}")
            if not component.name:
                raise TypeError(f"plugin '{info.name}' registered a {kind} without a name")
            typo = misspelt_methods(component, expected)
            if typo:
                raise TypeError(f"plugin '{info.name}': {kind} '{component.name}' ({type(component).__name__}) "
                                + "; ".join(typo))
            taken = self.registry[kind].get(component.name) or next(
                (c for c in found if c.kind == kind and c.name == component.name), None)
            if taken is not None:
                owner = self.plugins.get(taken.plugin, info)
                raise PluginError(f"{kind} name '{component.name}' clashes: already registered "
                                  f"by plugin '{taken.plugin}' ({type(taken).__name__}, {owner.provider()}), "
                                  f"again by '{info.name}' ({type(component).__name__}, {info.provider()})")
            component.plugin = info.name
            found.append(component)

        return register

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
        known = ", ".join(sorted(table)) or "none"
        raise UnknownComponentError(f"unknown {kind} '{name}'{did_you_mean(name, table)} (known: {known})")

    def all(self, kind: str) -> list[Component]:
        return list(self.registry[kind].values())

    def quantizer(self, target: str, precision: str, method: str) -> Component | None:
        return next((q for q in self.registry["quantizer"].values()
                     if q.key == (target, precision, method)), None)

    def add_commands(self, cli: Any) -> None:
        """Let every plugin add click commands; a failing third-party one is reported and skipped."""
        for impl in self.pm.hook.edgetl_commands.get_hookimpls():
            try:
                self.call_hook(impl.plugin, "edgetl_commands", cli=cli)
            except Exception as exc:
                info = self.plugins.get(impl.plugin_name)
                if info is None or info.source == "builtin":
                    raise
                self._broken(info, f"edgetl_commands failed: {type(exc).__name__}: {exc}", exc)


def misspelt_methods(component: Any, contract: type) -> list[str]:
    """Methods a component defines whose name is a near miss of one of its contract's (``quantise`` for
    ``quantize``, ``build_setings``): without this check the contract's default would run silently."""
    import difflib
    import inspect

    known = {n for n, v in inspect.getmembers(contract) if callable(v) and not n.startswith("_")}
    own: set[str] = set()
    for cls in type(component).__mro__:
        if cls is contract or issubclass(contract, cls):
            break
        own |= {n for n, v in vars(cls).items() if callable(v) and not n.startswith("_")}
    found = []
    for name in sorted(own - known):
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.85)
        if close:
            found.append(f"defines {name}(), which is no method of edgetl.api.{contract.__name__}; "
                         f"did you mean {close[0]}()?")
    return found


def blame(exc: BaseException) -> str | None:
    """Which plugin (and component) an unexpected exception came from, for a one-line error; None: edgetl's own.

    The innermost frame of the traceback that runs a registered component's
    method (its ``self``) names the component; else the innermost frame in a
    loaded plugin's module names the plugin.
    """
    import traceback

    modules = {} if _MANAGER is None else {i.module: i.name for i in _MANAGER.plugins.values() if i.module}
    frames = [frame for frame, _ in reversed(list(traceback.walk_tb(exc.__traceback__)))]
    for frame in frames:
        owner = frame.f_locals.get("self")
        if isinstance(owner, Component) and owner.plugin:
            return f"{owner.kind} '{owner.name}' (plugin {owner.plugin})"
    for frame in frames:
        module = str(frame.f_globals.get("__name__", ""))
        top = next((m for m in modules if module == m or module.startswith(m + ".")), None)
        if top is not None:
            return f"plugin {modules[top]} ({module})"
    return None


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
