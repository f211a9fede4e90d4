"""The Python API's workflow layer: train, load, predict, evaluate, export, verify.

It sits above the host (training, export) and beside the CLI, which calls
these same functions; ``import edgetl`` reaches them lazily (``edgetl.train``,
``edgetl.load``, …). Importing it imports no ML framework. See docs/python.md.
"""

from edgetl.workflow.bundle import Bundle, export_bundle, verify_report
from edgetl.workflow.model import Model, load
from edgetl.workflow.training import Run, train, train_config

__all__ = ["Bundle", "Model", "Run", "export_bundle", "load", "train", "train_config", "verify_report"]
