"""edgetl's built-in plugins, one subpackage each (``edgetl_builtins.onnx``, ``edgetl_builtins.timm``, ...).

They load first, always (``edgetl.plugins.DEFAULT_PLUGINS``), and are written
against the same public API a third-party plugin uses. Nothing here is an API:
third parties import only what docs/plugins.md documents (``edgetl.api``,
``edgetl.training``, ``edgetl.onnxtools``, ...), never ``edgetl_builtins.*``.
"""
