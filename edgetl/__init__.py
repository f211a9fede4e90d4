"""edgetl: adapt a pretrained network to a factory's images, export it, ship it.

Importing this package imports no ML framework: the CLI, the plugin manager and
the device side stay light; torch, timm, onnxruntime, openvino and friends are
imported inside the functions that need them.
"""

__version__ = "0.1.0"
