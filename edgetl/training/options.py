"""Strategy options for the SDK: defaults, and one-line errors for unknown keys or bad values (torch-free).

A strategy lists its options with their defaults and calls
:func:`resolve_options` in :meth:`edgetl.api.Strategy.check_options` (run
before the run directory exists) and again in ``fit``; the checks of single
values (:func:`positive_float`, :func:`resolve_freeze_bn`) raise the same
kind of one-line :class:`edgetl.errors.ConfigError` naming
``strategy.options.<key>``. A strategy may instead declare a pydantic model
(:meth:`edgetl.api.Strategy.options_model`). Importing this module loads no torch.
"""

from __future__ import annotations

from typing import Any

from edgetl.errors import ConfigError, did_you_mean


def resolve_options(strategy: str, given: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` updated with ``given``; an unknown key is a ConfigError with a "did you mean"."""
    for key in given:
        if key not in defaults:
            raise ConfigError(f"strategy.options.{key}: unknown option of '{strategy}'{did_you_mean(key, defaults)} "
                              f"(known: {', '.join(sorted(defaults))})")
    return {**defaults, **given}


def positive_float(strategy: str, key: str, value: Any, upper: float | None = None) -> float:
    """``value`` as a float > 0 (and <= ``upper``), or a ConfigError naming ``strategy.options.<key>``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"strategy.options.{key}: expected a number, got {value!r} ({strategy})") from None
    if v <= 0 or (upper is not None and v > upper):
        bound = f" and <= {upper}" if upper is not None else ""
        raise ConfigError(f"strategy.options.{key}: expected a number > 0{bound}, got {value!r} ({strategy})")
    return v


def resolve_freeze_bn(strategy: str, value: Any, per_rank_batch: int) -> bool:
    """The ``freeze_bn`` option: ``auto`` freezes BatchNorm statistics when a rank's batch is under 16 images."""
    if value == "auto":
        return per_rank_batch < 16
    if isinstance(value, bool):
        return value
    raise ConfigError(f"strategy.options.freeze_bn: expected auto, true or false, got {value!r} ({strategy})")


class DefaultOptions:
    """Mixin for a :class:`edgetl.api.Strategy` whose ``DEFAULTS`` dict lists every option it takes:
    :meth:`check_options` refuses an unknown key before the run starts (the built-in strategies use it)."""

    name: str
    DEFAULTS: dict[str, Any] = {}

    def check_options(self, options: dict[str, Any]) -> None:
        resolve_options(self.name, options, self.DEFAULTS)
