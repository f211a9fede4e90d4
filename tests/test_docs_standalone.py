"""The project's docs and code stand alone: they never cite a design file that is not in the repository."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("docs", "edgetl", "plugins", "examples", "benchmarks", "README.md")


def test_nothing_cites_a_design_file_outside_the_repository():
    design = "DESIGN" + ".md"  # split so this file does not match itself
    found = []
    for top in CHECKED:
        base = ROOT / top
        files = [base] if base.is_file() else [p for p in base.rglob("*") if p.suffix in (".md", ".py", ".yaml")]
        for path in files:
            for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if design in line:
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
