"""Strategy options: defaults, and one-line errors for unknown keys or bad values."""

from __future__ import annotations

import difflib
from typing import Any

from edgetl.errors import ConfigError


def resolve(strategy: str, given: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` updated with ``given``; an unknown key is a ConfigError with a "did you mean"."""
    for key in given:
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"strategy.options.{key}: unknown option of '{strategy}'{hint} "
                              f"(known: {', '.join(sorted(defaults))})")
    return {**defaults, **given}


def positive_float(strategy: str, key: str, value: Any, upper: float | None = None) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"strategy.options.{key}: expected a number, got {value!r} ({strategy})") from None
    if v <= 0 or (upper is not None and v > upper):
        bound = f" and <= {upper}" if upper is not None else ""
        raise ConfigError(f"strategy.options.{key}: expected a number > 0{bound}, got {value!r} ({strategy})")
    return v


def freeze_bn(strategy: str, value: Any, per_rank_batch: int) -> bool:
    """``auto`` freezes BatchNorm statistics when a rank's batch is under 16 images."""
    if value == "auto":
        return per_rank_batch < 16
    if isinstance(value, bool):
        return value
    raise ConfigError(f"strategy.options.freeze_bn: expected auto, true or false, got {value!r} ({strategy})")
