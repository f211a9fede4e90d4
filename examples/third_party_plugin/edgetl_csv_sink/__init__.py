"""An edgetl plugin written as an outsider would: a ``csv`` result sink.

Installed with pip, it is found through the ``edgetl`` entry-point group; the
core stamps the sink with this plugin's name (``csv``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from edgetl.api import Frame, Sink, SinkWriter
from edgetl.errors import ConfigError
from edgetl.hookspecs import hookimpl

COLUMNS = ("timestamp", "source", "frame", "label", "score", "model", "latency_ms")


class _CsvWriter(SinkWriter):
    def __init__(self, path: Path):
        new = not path.exists() or path.stat().st_size == 0
        self.file = path.open("a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        if new:
            self.writer.writerow(COLUMNS)

    def write(self, result: dict[str, Any], frame: Frame | None = None) -> None:
        label = result.get("label")
        score = result.get("scores", {}).get(label)
        self.writer.writerow([result.get("timestamp"), result.get("source"), result.get("frame"),
                              label, score, result.get("model"), result.get("latency_ms")])
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class CsvSink(Sink):
    name = "csv"
    description = "append timestamp, label and score of each result to a CSV file (option: path)"

    def open(self, options: dict[str, Any]) -> SinkWriter:
        if not options.get("path"):
            raise ConfigError("sink 'csv': option 'path' is required")
        path = Path(options["path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        return _CsvWriter(path)


@hookimpl
def edgetl_sinks(register):
    register(CsvSink())
