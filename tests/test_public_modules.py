"""Every public module (docs/architecture.md "Public modules", docs/python.md "Where things live") says what
it promises in ``__all__``: each name there exists, is documented, and nothing else is star-exported."""

from __future__ import annotations

import ast
import importlib
import inspect
import itertools
import re
from pathlib import Path

import pytest
from test_layers import public_modules

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def python_api_modules() -> set[str]:
    """The module names in the "Where things live" table of docs/python.md."""
    text = (DOCS / "python.md").read_text(encoding="utf-8")
    section = text.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(edgetl(?:\.\w+)*)` \|", section, flags=re.M))


PUBLIC = sorted(public_modules() | python_api_modules())
DOC_TEXT = "\n".join(p.read_text(encoding="utf-8") for p in sorted(DOCS.glob("*.md")))


def attribute_docstrings(module: object) -> set[str]:
    """Module-level names followed by a string literal (an attribute docstring, as Sphinx reads them)."""
    tree = ast.parse(inspect.getsource(module))
    found = set()
    for node, after in itertools.pairwise(tree.body):
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) else [])
        if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            found |= {t.id for t in targets if isinstance(t, ast.Name)}
    return found


def documented(module: object, name: str) -> bool:
    """Named in docs/*.md or the module's docstring, or with a docstring of its own (an attribute docstring
    for a constant)."""
    if name.startswith("__") or re.search(rf"\b{re.escape(name)}\b", DOC_TEXT + (inspect.getdoc(module) or "")):
        return True
    value = getattr(module, name)
    if inspect.isclass(value):
        return bool(value.__dict__.get("__doc__"))
    if callable(value):
        return bool(getattr(value, "__doc__", None))
    return name in attribute_docstrings(module)


def test_the_tables_name_the_modules_plugins_and_users_import():
    assert {"edgetl.api", "edgetl.hookspecs", "edgetl.training", "edgetl.errors", "edgetl.manifest",
            "edgetl.metrics", "edgetl.plugins", "edgetl", "edgetl.workflow", "edgetl.fmt"} <= set(PUBLIC)


@pytest.mark.parametrize("name", PUBLIC)
def test_a_public_module_lists_existing_documented_names_in_all(name):
    if name == "edgetl.training":
        pytest.importorskip("torch")  # its names load their submodules (and torch) on first use
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, list) and exported, f"{name}: no __all__"
    assert len(set(exported)) == len(exported), f"{name}: __all__ repeats a name"
    assert not [n for n in exported if n.startswith("_") and not n.endswith("__")], f"{name}: a private name"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what the module lacks: {missing}"
    undocumented = [n for n in exported if not documented(module, n)]
    assert not undocumented, f"{name}.__all__: not in docs/*.md and without a docstring: {undocumented}"
    namespace: dict[str, object] = {}
    exec(f"from {name} import *", namespace)  # noqa: S102 - the star import a user may write
    assert set(namespace) - {"__builtins__"} == set(exported)


def test_the_training_sdk_exports_exactly_what_it_loads_on_demand():
    import edgetl.training as training

    assert set(training.__all__) == set(training._WHERE)


def test_the_type_marker_ships_in_the_wheel():
    """PEP 561: ``py.typed`` next to the package, listed in the package data (pyproject.toml)."""
    import tomllib

    assert (ROOT / "edgetl" / "py.typed").is_file()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"]
    assert any("py.typed" in patterns for key, patterns in package_data.items() if key in ("*", "edgetl"))
