"""benchmarks/: what ``make bench`` runs is every maintained script, on public API; experiments live apart.

- every top-level ``benchmarks/*.py`` is a step of ``benchmarks/run_all.py`` (or run_all itself), and
  ``run_all.py --list`` prints every step;
- every script in ``benchmarks/experiments/`` is listed in that folder's README;
- the maintained scripts import no ``_private`` name or module, no built-in plugin (``edgetl_builtins``:
  they use the public API, as a third party would), and no experiment, and read no other object's ``_attribute`` (an AST
  scan: nothing is imported);
- every ``benchmarks/…`` path the docs mention exists (scripts were moved into experiments/).
"""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
EXPERIMENTS = BENCH / "experiments"
HELPERS = {"run_all.py"}  # not a benchmark: the runner


def run_all():
    spec = importlib.util.spec_from_file_location("edgetl_bench_run_all", BENCH / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def maintained() -> list[Path]:
    return sorted(p for p in BENCH.glob("*.py") if p.name not in HELPERS)


def experiments() -> list[Path]:
    return sorted(EXPERIMENTS.glob("*.py"))


def private_imports(path: Path, experiment_names: set[str]) -> list[str]:
    bad = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and getattr(node.value, "id", None) not in ("self", "cls")):
            bad.append(f"{path.name}:{node.lineno}: .{node.attr}: a private attribute of another object")
            continue
        if isinstance(node, ast.Import):
            found = [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            found = [(("." * node.level) + (node.module or ""), [a.name for a in node.names])]
        else:
            continue
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{node.lineno}"
        for module, names in found:
            parts = module.lstrip(".").split(".")
            if any(p.startswith("_") for p in parts) or any(n.startswith("_") for n in names):
                bad.append(f"{where}: {module} {names}: a private name")
            if parts[0] == "edgetl_builtins":
                bad.append(f"{where}: {module}: a built-in plugin (use the public API: edgetl.*, the CLI or "
                           "the plugin manager, as a third party would)")
            if parts[0] in experiment_names:
                bad.append(f"{where}: {module} is an experiment (benchmarks/experiments/)")
    return bad


def test_every_top_level_script_is_a_step_of_make_bench():
    steps = {s.script for s in run_all().STEPS if s.script is not None}
    assert steps <= {p.name for p in maintained()}, "a step names a script that is not there"
    missing = [p.name for p in maintained() if p.name not in steps]
    assert not missing, (f"{missing}: not a step of benchmarks/run_all.py; give it a Step with a quick "
                         "setting, or move it to benchmarks/experiments/ and list it in its README")


def test_run_all_lists_every_step_without_running_one():
    out = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--list"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=True).stdout
    listed = {line.split()[0] for line in out.splitlines() if line.strip()}
    names = {s.name for s in run_all().STEPS}
    assert names == listed, out
    assert "absent" not in out


def test_every_experiment_is_listed_in_its_readme():
    readme = (EXPERIMENTS / "README.md").read_text(encoding="utf-8")
    assert experiments(), "benchmarks/experiments/ holds no script"
    missing = [p.name for p in experiments() if f"`{p.name}`" not in readme]
    assert not missing, f"{missing}: not listed in benchmarks/experiments/README.md"


def test_maintained_benchmarks_import_no_private_names():
    names = {p.stem for p in experiments()}
    bad = [b for p in maintained() + [BENCH / h for h in HELPERS] for b in private_imports(p, names)]
    assert not bad, "\n".join(bad)


def test_the_private_import_check_catches_what_it_should(tmp_path):
    script = tmp_path / "x.py"
    script.write_text("from edgetl.host.splits import _split\nimport edgetl._x\nfrom edgetl_builtins.onnx import export_onnx\n"
                      "from edgetl_builtins.onnx.quantize import preprocess\nfrom edgetl_builtins.onnx import tail\n"
                      "from elpv_heads import fmt\nfrom edgetl.training import Split\n"
                      "agent.installer._threads\nself._ok\n")
    bad = private_imports(script, {"elpv_heads"})
    assert [b.split(":", 2)[1] for b in bad] == ["1", "2", "3", "4", "5", "6", "8"], bad


def test_benchmark_paths_in_the_docs_exist():
    docs = [*ROOT.glob("docs/*.md"), *BENCH.rglob("*.md"), ROOT / "README.md"]
    bad = []
    for doc in docs:
        for path in set(re.findall(r"benchmarks/[\w/.-]+\.(?:py|txt)", doc.read_text(encoding="utf-8"))):
            if not (ROOT / path).is_file():
                bad.append(f"{doc.relative_to(ROOT)}: {path}")
    assert not bad, "\n".join(bad)
