"""The import rules of docs/architecture.md, enforced on the source (AST scan, nothing imported).

1. Plugins (``plugins/`` and ``examples/``) import from edgetl only the public
   modules listed in docs/architecture.md, and never a ``_name``. One built-in
   (a subpackage of ``edgetl_builtins``) imports another only through the names
   the other's ``__init__`` lists in ``__all__``, never one of its submodules,
   and preferably not at all (what they share belongs in a public module, e.g.
   ``edgetl.onnxtools``; docs/plugins.md). A third party imports no built-in.
2. The layers: ``edgetl.training`` (the strategy SDK) builds on the core only;
   the core and the device side never reach up into host, training or the CLI;
   the host never imports the device side or the CLI.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edgetl"
UPPER = {"host", "training", "cli", "device", "deploy", "workflow"}  # everything else at the top of edgetl/ is the core


def public_modules() -> set[str]:
    """The module names in the "Public modules" table of docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Public modules", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(edgetl(?:\.\w+)*)` \|", section, flags=re.M))


def edgetl_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) for every import of ``edgetl`` or ``edgetl.*`` in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "edgetl"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "edgetl":
            found.append((node.lineno, node.module, [a.name for a in node.names]))
    return found


def layer(module: str) -> str:
    """``edgetl.host.engine`` -> ``host``; ``edgetl.api`` -> ``core``."""
    parts = module.split(".")
    if parts[1:2] == ["__main__"]:
        return "cli"
    return parts[1] if len(parts) > 1 and parts[1] in UPPER else "core"


def test_edgetl_api_names_every_public_name_in_all():
    """``edgetl.api.__all__`` is the promise: every public class and constant defined there, nothing else."""
    import inspect

    import edgetl.api as api

    defined = {n for n, v in vars(api).items() if not n.startswith("_") and not inspect.ismodule(v)
               and (getattr(v, "__module__", None) == "edgetl.api" or n.isupper()) and n not in ("ABC", "TYPE_CHECKING")}
    assert set(api.__all__) == defined


def test_the_public_module_table_is_there():
    assert {"edgetl.api", "edgetl.hookspecs", "edgetl.errors", "edgetl.training", "edgetl.preprocess",
            "edgetl.onnxtools"} <= public_modules()


def test_plugins_import_only_public_edgetl_modules_and_names():
    public = public_modules()
    bad = []
    files = list((ROOT / "plugins").rglob("*.py")) + list((ROOT / "examples").rglob("*.py"))
    for path in (f for f in files if "build" not in f.relative_to(ROOT).parts):
        for line, module, names in edgetl_imports(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if module == "edgetl" and names:  # from edgetl import x: x must be a public module
                bad += [f"{where}: edgetl.{n}" for n in names if f"edgetl.{n}" not in public]
            elif module != "edgetl" and module not in public:
                bad.append(f"{where}: {module} is not a public module (docs/architecture.md)")
            bad += [f"{where}: {module}.{n} is private" for n in names if n.startswith("_")]
    assert not bad, "\n".join(bad)


BUILTINS = "edgetl_builtins"


def plugin_packages() -> dict[str, set[str]]:
    """Each built-in plugin (``edgetl_builtins.X``) -> the names its ``__init__``'s literal ``__all__`` lists."""
    found = {}
    for init in (ROOT / "plugins" / BUILTINS).glob("*/__init__.py"):
        names: set[str] = set()
        for node in ast.parse(init.read_text(encoding="utf-8")).body:
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AnnAssign) and node.value is not None else []
            if any(getattr(t, "id", None) == "__all__" for t in targets):
                names = set(ast.literal_eval(node.value))
        found[f"{BUILTINS}.{init.parent.name}"] = names
    return found


def test_the_built_in_plugins_are_one_package():
    """One import name for all of them: ``plugins/`` holds ``edgetl_builtins`` only, and every subpackage is loaded."""
    from edgetl.plugins import DEFAULT_PLUGINS

    assert sorted(p.name for p in (ROOT / "plugins").iterdir() if p.name != "__pycache__") == [BUILTINS]
    assert set(DEFAULT_PLUGINS) == set(plugin_packages())
    assert "COMMON_OPTIONS" in plugin_packages()[f"{BUILTINS}.strategies"]


def cross_plugin_imports(packages: dict[str, set[str]], root: Path = ROOT) -> list[str]:
    """Every import, under ``root``'s plugins/ and examples/, that breaks rule 1 for built-ins."""
    bad = []
    files = list((root / "plugins").rglob("*.py")) + list((root / "examples").rglob("*.py"))
    for path in (f for f in files if "build" not in f.relative_to(root).parts):
        rel = path.relative_to(root)
        own = f"{BUILTINS}.{rel.parts[2]}" if rel.parts[:2] == ("plugins", BUILTINS) and len(rel.parts) > 3 else None
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                found = [(a.name, []) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found = [(node.module, [a.name for a in node.names])]
            else:
                continue
            where = f"{rel}:{node.lineno}"
            for module, names in found:
                if module.split(".")[0] != BUILTINS:
                    continue
                if own is None:
                    bad.append(f"{where}: {module}: only edgetl's own plugins import a built-in")
                    continue
                if module == BUILTINS:  # from edgetl_builtins import onnx: a whole other plugin
                    bad += [f"{where}: {BUILTINS}.{n} is another plugin; import names from its __all__"
                            for n in names if f"{BUILTINS}.{n}" != own]
                    continue
                top = ".".join(module.split(".")[:2])
                if top == own:
                    continue
                if module != top:
                    bad.append(f"{where}: {module} is another plugin's submodule; import from {top} "
                               f"(its __all__: {', '.join(sorted(packages.get(top, ()))) or 'nothing'})")
                bad += [f"{where}: {top}.{n} is not in {top}.__all__" for n in names
                        if n not in packages.get(top, set())]
    return bad


def test_built_in_plugins_use_only_each_others_public_names():
    bad = cross_plugin_imports(plugin_packages())
    assert not bad, "\n".join(bad)


def test_the_cross_plugin_rule_catches_a_private_import(tmp_path):
    """The scan above is not vacuous: the ONNX helpers' old home is rejected, and so is a submodule."""
    packages = plugin_packages()
    assert packages[f"{BUILTINS}.onnx"] == set()  # what the built-in targets share is edgetl.onnxtools
    fake = tmp_path / "plugins" / BUILTINS / "openvino"
    fake.mkdir(parents=True)
    (tmp_path / "examples").mkdir()
    (fake / "bad.py").write_text(f"from {BUILTINS}.onnx import export_onnx\nfrom {BUILTINS}.strategies.finetune "
                                 "import build_model\nfrom edgetl_builtins.openvino.export import export_ir\n")
    (tmp_path / "examples" / "outsider.py").write_text(f"import {BUILTINS}.timm\n")
    bad = cross_plugin_imports(packages, tmp_path)
    assert sorted(b.split(": ", 1)[0] for b in bad) == ["examples/outsider.py:1",
                                                        "plugins/edgetl_builtins/openvino/bad.py:1",
                                                        "plugins/edgetl_builtins/openvino/bad.py:2"], bad


ALLOWED = {
    "training": {"core", "training"},
    "host": {"core", "training", "host"},
    "device": {"core", "device"},
    "deploy": {"core", "device", "deploy"},
    "workflow": {"core", "training", "host", "device", "deploy", "workflow"},
    "cli": {"core", "training", "host", "device", "deploy", "workflow", "cli"},
    "core": {"core"},
}
EXCEPTIONS = {("edgetl/predictor.py", "edgetl.host.predictor_run")}  # a run directory needs torch: lazy, host only


def test_each_layer_imports_only_what_docs_architecture_allows():
    bad = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        mine = layer(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for line, module, names in edgetl_imports(path):
            targets = [f"{module}.{n}" for n in names] if module == "edgetl" else [module]
            for target in targets:
                if layer(target) not in ALLOWED[mine] and (rel, target) not in EXCEPTIONS:
                    bad.append(f"{rel}:{line}: {mine} imports {target} ({layer(target)})")
    assert not bad, "\n".join(bad)


def test_the_layer_table_names_every_core_module():
    """docs/architecture.md's core row lists every module at the top of edgetl/ (their visible home)."""
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    core_row = next(line for line in doc.splitlines() if line.startswith("| core |"))
    named = set(re.findall(r"`edgetl\.([a-z_]+)", core_row))
    modules = {p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("_")}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file() and p.name not in UPPER}
    assert sorted((modules | packages) - named) == []
