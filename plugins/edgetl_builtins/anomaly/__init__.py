"""Built-in anomaly-detection strategies: ``patchcore`` and ``padim`` (good images only).

Registered through the same ``edgetl_strategies`` hook a third party uses,
built on public edgetl modules only. Nothing heavy at import: torch loads
when a strategy fits.
"""

from __future__ import annotations

from edgetl.hookspecs import hookimpl


@hookimpl
def edgetl_strategies(register):
    from edgetl_builtins.anomaly.strategies import Padim, PatchCore

    register(PatchCore())
    register(Padim())
