"""Built-in transfer-learning strategies: ``lora``, ``dann``, ``intermediate-pretrain``, ``rehearsal``.

Ordinary strategy plugins on the public SDK (``edgetl.training``), registered
through the same ``edgetl_strategies`` hook a third party uses. Whatever they
learn ends up inside the one module they return (LoRA merged into the base
weights, the domain and rotation heads dropped; a rehearsal buffer stays in the run directory). Nothing heavy at import.
"""

from __future__ import annotations

from edgetl.hookspecs import hookimpl


@hookimpl
def edgetl_strategies(register):
    from edgetl_builtins.transfer.dann import Dann
    from edgetl_builtins.transfer.lora import Lora
    from edgetl_builtins.transfer.pretrain import IntermediatePretrain
    from edgetl_builtins.transfer.rehearsal import Rehearsal

    register(Lora())
    register(Dann())
    register(IntermediatePretrain())
    register(Rehearsal())
