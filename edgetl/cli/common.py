"""Helpers shared by command modules: JSON output, progress, tables and options used everywhere."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

import click

json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print exactly one JSON document on stdout; logs go to stderr.")

threads_option = click.option(
    "--threads", type=int, default=None, metavar="N",
    help="CPU threads for inference (default: OMP_NUM_THREADS if set, else the CPUs this process may use less "
         "those other processes keep busy; docs/cli.md, \"Threads\").")



def threshold_options(func):
    """``--threshold``/``--recall``/``--frr``/``--val``: another operating point for this command only."""
    for option in reversed([
        click.option("--threshold", type=float, default=None, metavar="X",
                     help="Decide with this threshold on the positive class instead of the stored one."),
        click.option("--recall", type=float, default=None, metavar="R",
                     help="The highest threshold whose recall of the positive class on val is >= R."),
        click.option("--frr", type=float, default=None, metavar="F",
                     help="The lowest threshold whose false-reject rate on val is <= F."),
        click.option("--val", "val_dir", type=click.Path(file_okay=False), default=None,
                     help="Validation folder for the effect and the targets (default: the run's data.val)."),
    ]):
        func = option(func)
    return func


def apply_operating_point(model, threshold, recall, frr, val_dir, batch: int = 32) -> None:
    """Set the asked operating point on ``model`` and print its effect on val (stderr)."""
    from edgetl.workflow.operating_point import choose

    point = choose(model, threshold=threshold, recall=recall, frr=frr, val=val_dir, batch=batch)
    if point is not None:
        info(point.describe(model.positive))


WIDE = 400  # columns for tables when stdout is not a terminal: a pipe or a file keeps every cell whole


def emit_json(document: Any) -> None:
    """Write one JSON document on stdout (and nothing else there)."""
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def info(message: str) -> None:
    """Progress and logs: always stderr, so stdout stays machine-readable.

    Inside :func:`long_step` the message also resets its heartbeat, and it reaches
    the real stderr even while library output is hidden.
    """
    from edgetl import progress, quiet

    beat = progress.current()
    if beat is not None:
        beat.log(message)
    else:
        click.echo(message, file=quiet.progress_stream())


@contextlib.contextmanager
def long_step(what: str) -> Iterator[None]:
    """Run a step that can take minutes: a heartbeat line when silent, library noise hidden.

    Library output (nncf's INFO lines, torch's CUDA notice, warnings) is shown
    only with ``--verbose``/``--debug``; if the step fails, one line says how
    much was hidden.
    """
    from edgetl import progress, quiet

    before = quiet.hidden_count()
    try:
        with progress.Heartbeat(what), quiet.library_output_hidden():
            yield
    except BaseException:
        hidden = quiet.hidden_count() - before
        if hidden and not quiet.verbose_on():
            click.echo(f"({hidden} lines of library output were hidden; run with --verbose to see them)",
                       err=True)
        raise


def inference_threads(threads: int | None) -> int | None:
    """Before torch loads: passive OpenMP waits and the thread count (:mod:`edgetl.threads`).

    Returns the count for :func:`edgetl.workflow.load`; None where torch was already imported
    and no ``--threads`` was given (a program embedding the CLI keeps its own setting).
    """
    from edgetl.threads import configure, torch_owned_elsewhere

    owned = torch_owned_elsewhere()
    count = configure(threads)[0]
    return None if owned and threads is None else count


def console(stderr: bool = False) -> Any:
    """A rich Console that never cuts a table at 80 columns when the output is not a terminal."""
    from rich.console import Console

    made = Console(stderr=stderr)
    return made if made.is_terminal else Console(stderr=stderr, width=WIDE)
