"""The names of the views (no torch: config checks use them before anything loads)."""

from __future__ import annotations

VIEWS = ("identity", "hflip", "vflip", "rot180", "rot90", "rot270", "transpose", "antitranspose")
"""Every view :func:`edgetl.training.apply_view` knows: the 8 symmetries of the square (the last four need
square inputs; ``transpose`` mirrors about the main diagonal, ``antitranspose`` about the other one)."""

TTA_VIEWS = ("hflip", "vflip", "rot180")
"""Views usable at test time: shape-preserving for any H, W."""
