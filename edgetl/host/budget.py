"""The negative-transfer baseline's budget: what "the same budget" means, and what it really got.

``train.baseline_budget`` picks it for the ``scratch`` baseline: ``wall_clock``
(the main run's training seconds; the baseline stops after the epoch that
crosses them) or ``epochs`` (the same ``train.epochs``). The ``linear-probe``
baseline always gets the same epochs. report.md says which applied, and a
baseline that ran a single epoch is flagged: its verdict says little.
"""

from __future__ import annotations

from typing import Any


def plan(cfg: Any, kind: str, main_seconds: float) -> tuple[str, float | None, str]:
    """(budget name, wall-clock limit in seconds or None, the log line announcing it)."""
    budget = cfg.train.baseline_budget if kind == "scratch" else "epochs"
    if budget == "wall_clock":
        return budget, main_seconds, (f"baseline: {kind}, budget: the same wall-clock as this run's training "
                                      f"({main_seconds:.0f} s, at most {cfg.train.epochs} epochs)")
    return budget, None, f"baseline: {kind}, budget: the same epochs ({cfg.train.epochs})"


def facts(history: list[dict[str, Any]], kind: str, budget: str, main_seconds: float,
          epochs: int) -> dict[str, Any]:
    """What the baseline really got, for metrics.json and report.md (rows tagged ``baseline-KIND``)."""
    run = sum(1 for row in history if row.get("strategy") == f"baseline-{kind}")
    return {"budget": budget, "budget_seconds": main_seconds, "budget_epochs": epochs, "epochs_run": run,
            "single_epoch": run == 1 and epochs > 1}


SINGLE_EPOCH_WARNING = ("warning: the baseline ran a single epoch, so its verdict says little; "
                        "set train.baseline_budget: epochs, or train.baseline: none")
