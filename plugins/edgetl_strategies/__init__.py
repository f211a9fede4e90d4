"""Built-in adaptation strategies: ``linear-probe``, ``finetune``, ``progressive``, ``partial-finetune``.

Registered through the same ``edgetl_strategies`` hook a third party uses.
Nothing heavy at import: torch loads when a strategy fits.
"""

from __future__ import annotations

from edgetl.hookspecs import hookimpl


@hookimpl
def edgetl_strategies(register):
    from edgetl_strategies.finetune import Finetune, Progressive
    from edgetl_strategies.linear_probe import LinearProbe
    from edgetl_strategies.partial import PartialFinetune

    register(LinearProbe())
    register(Finetune())
    register(Progressive())
    register(PartialFinetune())
