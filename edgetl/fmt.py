"""One way to print a number a user reads: probabilities, tolerances, percentages.

``eval``, ``predict``, ``export``, ``deploy`` and ``bundle verify`` all format
through these, so the same threshold or tolerance never reads ``0.1997506469``
in one place, ``0.15`` in another and ``1e-01`` in a third.

- :func:`prob`: a probability, score or threshold in [0, 1] -> 3 decimals
  (``0.305``); values under 0.001 keep 3 significant digits (``0.000123``).
- :func:`tol`: a tolerance or difference of any size -> 3 significant digits
  (``0.15``, ``0.1``, ``2.34e-05``).
- :func:`pct`: a fraction as a percentage with one decimal (``76.0 %``).

``None`` prints as an en dash everywhere. Machine output (``--json``) keeps
full precision; only what people read is rounded.
"""

from __future__ import annotations

__all__ = ["prob", "tol", "pct"]


NONE = "–"


def prob(x: float | None) -> str:
    """A probability, score or threshold: ``0.305``; ``0.000123`` below 0.001."""
    if x is None:
        return NONE
    x = float(x)
    if x != 0 and abs(x) < 0.001:
        return f"{x:.3g}"
    return f"{x:.3f}"


def tol(x: float | None) -> str:
    """A tolerance, bound or difference: 3 significant digits (``0.15``, ``2.34e-05``)."""
    if x is None:
        return NONE
    return f"{float(x):.3g}"


def pct(x: float | None) -> str:
    """A fraction in [0, 1] as a percentage: ``76.0 %``."""
    if x is None:
        return NONE
    return f"{100 * float(x):.1f} %"
