"""Built-in sinks that need nothing beyond the core: ``stdout`` and ``jsonl``.

Each pipeline result is one JSON document per line, so the output of a camera
run can be read back with any JSON-lines tool.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from edgetl.api import Frame, Sink, SinkWriter
from edgetl.errors import ConfigError
from edgetl.hookspecs import hookimpl


class _LineWriter(SinkWriter):
    def __init__(self, stream: Any, owned: bool):
        self.stream, self.owned = stream, owned

    def write(self, result: dict[str, Any], frame: Frame | None = None) -> None:
        self.stream.write(json.dumps(result, sort_keys=True) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.owned:
            self.stream.close()


class StdoutSink(Sink):
    name = "stdout"
    description = "print each result as one JSON line on standard output"

    def open(self, options: dict[str, Any]) -> SinkWriter:
        return _LineWriter(sys.stdout, owned=False)


class JsonlSink(Sink):
    name = "jsonl"
    description = "append each result as one JSON line to a file (option: path)"

    def open(self, options: dict[str, Any]) -> SinkWriter:
        if not options.get("path"):
            raise ConfigError("sink 'jsonl': option 'path' is required (the file to append to)")
        path = Path(options["path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        return _LineWriter(path.open("a", encoding="utf-8"), owned=True)


@hookimpl
def edgetl_sinks(register):
    register(StdoutSink())
    register(JsonlSink())
