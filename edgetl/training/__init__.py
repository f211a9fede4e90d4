"""``edgetl.training``: the public SDK for writing a strategy (semver-stable).

Everything named in ``__all__`` is promised: it keeps its name and meaning
across minor versions; anything else under ``edgetl.training`` (and all of
``edgetl.host``) is private. Importing this package is cheap; each name loads
its submodule (and torch) on first use, so a plugin takes the names inside
``fit``, keeping ``edgetl --help`` torch-free. See ``docs/plugins.md``
("Writing a strategy").

Model:       :class:`Classifier`, :func:`build_classifier`
Loop:        :func:`fit_epochs`, :class:`TrainStep`, :func:`default_step`, :class:`Callback`, :class:`EarlyStopping`,
             :class:`HistoryRow`, :data:`HIGHER_IS_BETTER`, :func:`val_row`,
             :func:`soft_cross_entropy`, :func:`set_bn_eval`
Optimiser:   :func:`param_groups`, :func:`make_optimizer`, :class:`Schedule`,
             :func:`class_weights`, :func:`prior_shift`, :func:`soft_targets`
Features:    :func:`extract_features`, :class:`StagePool`, :func:`gem`, :data:`VIEWS`, :data:`TTA_VIEWS`,
             :data:`SQUARE_TTA_VIEWS`, :func:`apply_view`, :class:`WithTTA`
Partial:     :func:`split_backbone`, :class:`OnMaps`
Data:        :class:`Split`, :func:`with_images`, :func:`batches`, :func:`predict`, :func:`to_device`
Memory:      :class:`PeakMemory`, :func:`rss_bytes`
Options:     :func:`resolve_options`, :func:`positive_float`, :func:`resolve_freeze_bn`,
             :class:`DefaultOptions` (torch-free)
DDP:         :class:`DistInfo`, :func:`dist_info`, :func:`is_main`, :func:`shard`,
             :func:`all_gather`, :func:`all_reduce_sum`, :func:`broadcast`, :func:`barrier`
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the real types for type checkers; at run time each name loads on first use (__getattr__)
    from edgetl.training.data import batches, predict, to_device
    from edgetl.training.datasets import Split, with_images
    from edgetl.training.dist import (
        DistInfo,
        all_gather,
        all_reduce_sum,
        barrier,
        broadcast,
        dist_info,
        is_main,
        shard,
    )
    from edgetl.training.features import StagePool, extract_features, gem
    from edgetl.training.loop import (
        HIGHER_IS_BETTER,
        Callback,
        EarlyStopping,
        HistoryRow,
        TrainStep,
        default_step,
        fit_epochs,
        set_bn_eval,
        soft_cross_entropy,
        val_row,
    )
    from edgetl.training.memory import PeakMemory, rss_bytes
    from edgetl.training.model import Classifier, build_classifier
    from edgetl.training.optim import (
        Schedule,
        class_weights,
        make_optimizer,
        param_groups,
        prior_shift,
        soft_targets,
    )
    from edgetl.training.options import DefaultOptions, positive_float, resolve_freeze_bn, resolve_options
    from edgetl.training.partial import OnMaps, split_backbone
    from edgetl.training.view_names import SQUARE_TTA_VIEWS, TTA_VIEWS, VIEWS
    from edgetl.training.views import WithTTA, apply_view

_WHERE = {
    "Classifier": "model", "build_classifier": "model",
    "fit_epochs": "loop", "TrainStep": "loop", "default_step": "loop", "Callback": "loop", "EarlyStopping": "loop", "HistoryRow": "loop",
    "HIGHER_IS_BETTER": "loop", "val_row": "loop", "soft_cross_entropy": "loop", "set_bn_eval": "loop",
    "param_groups": "optim", "make_optimizer": "optim", "Schedule": "optim", "class_weights": "optim",
    "soft_targets": "optim", "prior_shift": "optim",
    "extract_features": "features", "StagePool": "features", "gem": "features",
    "split_backbone": "partial", "OnMaps": "partial",
    "VIEWS": "view_names", "TTA_VIEWS": "view_names", "SQUARE_TTA_VIEWS": "view_names",
    "apply_view": "views", "WithTTA": "views",
    "Split": "datasets", "with_images": "datasets", "batches": "data", "predict": "data", "to_device": "data",
    "PeakMemory": "memory", "rss_bytes": "memory",
    "DistInfo": "dist", "dist_info": "dist", "is_main": "dist", "shard": "dist", "all_gather": "dist",
    "all_reduce_sum": "dist", "broadcast": "dist", "barrier": "dist",
    "resolve_options": "options", "positive_float": "options", "resolve_freeze_bn": "options",
    "DefaultOptions": "options",
}

# a literal list, so linters and type checkers see the re-exports (tests/test_public_modules.py: = _WHERE)
__all__ = [
    "Callback", "Classifier", "DefaultOptions", "DistInfo", "EarlyStopping", "HIGHER_IS_BETTER",
    "HistoryRow", "OnMaps", "PeakMemory", "SQUARE_TTA_VIEWS", "Schedule", "Split", "StagePool",
    "TTA_VIEWS", "TrainStep", "VIEWS", "WithTTA", "all_gather", "all_reduce_sum", "apply_view",
    "barrier", "batches", "broadcast", "build_classifier", "class_weights", "default_step", "dist_info",
    "extract_features", "fit_epochs", "gem", "is_main", "make_optimizer", "param_groups",
    "positive_float", "predict", "prior_shift", "resolve_freeze_bn", "resolve_options", "rss_bytes", "set_bn_eval",
    "shard", "soft_cross_entropy", "soft_targets", "split_backbone", "to_device", "val_row",
    "with_images",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'edgetl.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"edgetl.training.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
