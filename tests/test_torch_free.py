"""The device side and the CLI's cold path import with torch made unimportable.

Every module of the ``edgetl`` package outside ``edgetl.host`` and the
submodules of ``edgetl.training`` (the strategy SDK, host side; the package
itself must stay cheap to import) and every
built-in plugin module that is not a host half (named ``host*``/``export*``/
``quantize*``/``train*``/``backbone*``/``strateg*``) is imported in a fresh
interpreter in which importing torch, torchvision or timm raises.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST_PREFIXES = ("host", "export", "quantiz", "train", "backbone", "strateg", "calib", "gate")
# ``None`` in sys.modules makes ``import torch`` fail and ``find_spec`` answer "not installed":
# exactly a device without torch.
BLOCKER = """
import sys
for _name in ('torch', 'torchvision', 'timm'):
    sys.modules[_name] = None
"""


def _module_name(path: Path, base: Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def device_side_modules() -> list[str]:
    names = []
    for path in sorted((ROOT / "edgetl").rglob("*.py")):
        rel = path.relative_to(ROOT / "edgetl").parts
        if rel[0] == "host" or "__main__" in path.name or (rel[0] == "training" and path.name != "__init__.py"):
            continue
        names.append(_module_name(path, ROOT))
    for path in sorted((ROOT / "plugins").rglob("*.py")):
        inner = path.relative_to(ROOT / "plugins").parts[2:-1]  # folders inside one built-in (anomaly/host)
        if path.stem.startswith(HOST_PREFIXES) or any(p.startswith(HOST_PREFIXES) for p in inner):
            continue
        names.append(_module_name(path, ROOT / "plugins"))
    return names


def test_device_side_imports_without_torch():
    modules = device_side_modules()
    assert "edgetl.preprocess" in modules and "edgetl_builtins.stdio" in modules
    code = BLOCKER + "import importlib\nfailed = []\n"
    code += f"for m in {modules!r}:\n"
    code += "    try:\n        importlib.import_module(m)\n"
    code += "    except Exception as e:\n        failed.append(f'{m}: {type(e).__name__}: {e}')\n"
    code += "print('\\n'.join(failed))\nassert sys.modules['torch'] is None\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "", out.stdout + out.stderr


def test_plugin_manager_loads_every_builtin_without_torch():
    code = BLOCKER + ("from edgetl.plugins import PluginManager\n"
                      "pm = PluginManager()\n"
                      "print(sorted(pm.plugins))\n"
                      "assert sys.modules['torch'] is None\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
