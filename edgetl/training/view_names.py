"""The names of the views (no torch: config checks use them before anything loads)."""

from __future__ import annotations

VIEWS = ("identity", "hflip", "vflip", "rot180", "rot90", "rot270", "transpose", "antitranspose")
"""Every view :func:`edgetl.training.apply_view` knows: the 8 symmetries of the square (the last four need
square inputs; ``transpose`` mirrors about the main diagonal, ``antitranspose`` about the other one)."""

TTA_VIEWS = ("hflip", "vflip", "rot180")
"""Views usable at test time: shape-preserving for any H, W."""

SQUARE_TTA_VIEWS = ("rot90", "rot270", "transpose", "antitranspose")
"""Views usable at test time on square inputs only (H == W): they swap height and width. With
:data:`TTA_VIEWS` they are the 7 non-identity symmetries of the square, so averaging over all of them
gives a model whose output is the same for an image and any of its rotations and mirror images."""


def check_tta_views(views: tuple[str, ...] | list[str], size: tuple[int, int] | None = None) -> None:
    """Refuse test-time views that are unknown, or that need a square input when ``size`` (H, W) is not.

    Raises:
        ValueError: names the first bad view (and the size); the caller adds where it came from.
    """
    for view in views:
        if view not in TTA_VIEWS + SQUARE_TTA_VIEWS:
            raise ValueError(f"unknown test-time view {view!r} "
                             f"(known: {', '.join(TTA_VIEWS + SQUARE_TTA_VIEWS)})")
        if size is not None and view in SQUARE_TTA_VIEWS and size[0] != size[1]:
            raise ValueError(f"view {view!r} swaps height and width, so it needs a square input, and this one is "
                             f"{size[0]}x{size[1]} (H x W): drop it ({', '.join(TTA_VIEWS)} fit any size) "
                             "or make the input square")
