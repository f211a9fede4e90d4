"""Helpers shared by command modules: JSON output and options used everywhere."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print exactly one JSON document on stdout; logs go to stderr.")


def emit_json(document: Any) -> None:
    """Write one JSON document on stdout (and nothing else there)."""
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def info(message: str) -> None:
    """Progress and logs: always stderr, so stdout stays machine-readable."""
    click.echo(message, err=True)
