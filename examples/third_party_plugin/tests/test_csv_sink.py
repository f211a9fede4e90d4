"""How a plugin author tests their plugin: load it through edgetl's manager, use it."""

import csv

from edgetl.plugins import PluginManager


def test_csv_sink_writes_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETL_LOAD_PLUGINS", "csv")
    sink = PluginManager().get("sink", "csv")
    writer = sink.open({"path": tmp_path / "out.csv"})
    writer.write({"label": "defect", "scores": {"defect": 0.9, "good": 0.1}, "frame": 3})
    writer.close()
    rows = list(csv.reader((tmp_path / "out.csv").open()))
    assert rows[0][3] == "label" and rows[1][3] == "defect" and float(rows[1][4]) == 0.9
