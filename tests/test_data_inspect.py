"""`edgetl data inspect`: counts, sizes, corrupt files named, imbalance, contact sheet, JSON; no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
from click.testing import CliRunner

from edgetl.cli import cli


def _png(path, shape=(20, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))


def _split_root(tmp_path):
    root = tmp_path / "ds"
    for i in range(8):
        _png(root / "train" / "good" / f"g{i}.png")
    _png(root / "train" / "defect" / "d0.png", (40, 40))
    _png(root / "val" / "good" / "v.png")
    _png(root / "val" / "defect" / "w.png")
    (root / "train" / "defect" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


def test_inspect_json_reports_counts_sizes_corrupt_and_imbalance(tmp_path):
    root = _split_root(tmp_path)
    sheet = tmp_path / "sheet.png"
    result = CliRunner().invoke(cli, ["data", "inspect", str(root), "--json", "--sheet", str(sheet)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["layout"] == "splits" and doc["classes"] == ["defect", "good"]
    assert doc["splits"]["train"] == {"counts": {"defect": 2, "good": 8}, "n": 10}
    assert doc["splits"]["val"]["n"] == 2 and doc["n"] == 12
    assert doc["image_sizes"] == {"30x20": 10, "40x40": 1}
    assert len(doc["corrupt"]) == 1 and doc["corrupt"][0]["path"].endswith("broken.png")
    assert any("train: imbalanced, 8 'good' vs 2 'defect'" in w for w in doc["warnings"])
    assert any("--skip-bad" in w for w in doc["warnings"])
    image = cv2.imread(str(sheet))
    assert doc["sheet"] == str(sheet) and image.shape[0] == 2 * (96 + 8)  # one row per class


def test_inspect_plain_image_folder_prints_a_table(tmp_path):
    for label in ("a", "b"):
        for i in range(3):
            _png(tmp_path / "f" / label / f"{i}.png")
    result = CliRunner().invoke(cli, ["data", "inspect", str(tmp_path / "f")])
    assert result.exit_code == 0, result.output
    assert "6 images, 2 classes (folder)" in result.output and "corrupt: 0" in result.output


def test_inspect_missing_folder_is_one_line_error(tmp_path):
    result = CliRunner().invoke(cli, ["data", "inspect", str(tmp_path / "none")])
    assert result.exit_code == 1 and "folder not found" in result.output


def test_data_modules_and_help_do_not_import_torch():
    code = ("import sys; import edgetl.data.folder, edgetl.data.elpv, edgetl.data.textures, "
            "edgetl.data.inspect, edgetl.cli.data_cmd; "
            "print(sorted(m for m in ('torch', 'timm', 'skimage') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
