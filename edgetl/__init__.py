"""edgetl: adapt a pretrained network to a factory's images, export it, ship it.

Importing this package imports no ML framework: the CLI, the plugin manager and
the device side stay light; torch, timm, onnxruntime, openvino and friends are
imported inside the functions that need them.

The Python API (docs/python.md) is reached as attributes of this package and
loaded on first use (PEP 562 ``__getattr__``)::

    import edgetl
    run = edgetl.train("config.yaml", train={"epochs": 3})
    model = edgetl.load(run.dir)            # or a bundle file
    model.predict("images/")                # -> [Prediction, ...]
    bundle = model.export("openvino", sign="me.key")
    bundle.verify(trust="me.pub")
    edgetl.deploy(bundle, device="https://cam1:8470", token="...")
    edgetl.collect("https://cam1:8470", "data/feedback", token="...")  # marked frames back
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access, never at `import edgetl`)
_LAZY = {
    "train": "edgetl.workflow", "load": "edgetl.workflow", "Run": "edgetl.workflow", "Model": "edgetl.workflow",
    "Prediction": "edgetl.prediction",
    "Bundle": "edgetl.workflow", "Deployment": "edgetl.deploy.deployment",
    "collect": "edgetl.deploy.collect",
}

# submodules that are part of the API: the edgetl.deploy package is callable (edgetl.deploy(bundle, device=…))
_MODULES = ("deploy", "fmt")

__all__ = ["__version__", *_MODULES, *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f"edgetl.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgetl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
