"""Keep third-party noise out of edgetl's output unless asked (``--verbose`` / ``--debug``).

torch logs ``No CUDA runtime is found…`` when nncf imports its extension
helpers, nncf logs ``INFO:nncf:`` lines through a handler bound to stdout at
import time, and OpenVINO, ONNX and the exporters raise warnings. None of it
is for the user of a command line, and some of it lands in the middle of a
table or of ``--json`` output. :func:`library_output_hidden` swaps
``sys.stdout``/``sys.stderr`` and every logging handler bound to them for
one buffer while a heavy step runs; edgetl's own progress keeps reaching the
terminal through :func:`progress_stream`.

Handlers that libraries create *during* the step bind to the buffer and keep
it afterwards: in a command-line process that is what we want (the noise of
a later step is hidden too). The buffer counts the lines it swallows so a
failure can say how many were hidden (``--verbose`` shows them).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import TextIO


def verbose_on() -> bool:
    """``--verbose``/``--debug`` (or ``EDGETL_VERBOSE=1``/``EDGETL_DEBUG=1``): show library output."""
    return any(os.environ.get(name, "") not in ("", "0", "false") for name in ("EDGETL_VERBOSE", "EDGETL_DEBUG"))


class _Buffer(io.TextIOBase):
    """A text stream that swallows what the libraries said and counts its non-empty lines."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self._partial = ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        *done, self._partial = (self._partial + text).split("\n")
        for line in done:
            if line.strip():
                self.count += 1
        return len(text)


_stack: list[TextIO] = []  # the real stderr of each active hidden step, innermost last
_buffer = _Buffer()


def progress_stream() -> TextIO:
    """Where edgetl's own progress goes: the stderr that was there before any step hid library output."""
    return _stack[0] if _stack else sys.stderr


def hidden_count() -> int:
    """Lines of library output hidden so far in this process."""
    return _buffer.count


def stream_handlers(streams: tuple[object, ...]) -> list[logging.StreamHandler]:
    """Every logging handler (root and named loggers) writing to one of ``streams``."""
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]
    return [h for lg in loggers for h in getattr(lg, "handlers", [])
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
            and h.stream in streams]


@contextlib.contextmanager
def library_output_hidden(verbose: bool | None = None) -> Iterator[None]:
    """Hide library prints, log lines and warnings while the block runs (no-op when verbose).

    edgetl's own progress must be written to :func:`progress_stream` (the CLI's
    ``info`` does). Nested use is a no-op for the inner block.
    """
    if (verbose_on() if verbose is None else verbose) or _stack:
        yield
        return
    real_out, real_err = sys.stdout, sys.stderr
    swapped = [(h, h.setStream(_buffer)) for h in
               stream_handlers((real_out, real_err, sys.__stdout__, sys.__stderr__))]
    _stack.append(real_err)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            with contextlib.redirect_stdout(_buffer), contextlib.redirect_stderr(_buffer):
                yield
    finally:
        _stack.pop()
        for handler, stream in swapped:
            handler.setStream(stream)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings into the buffer; edgetl's own (DataWarning, PluginWarning) still reach the user."""
    text = warnings.formatwarning(message, category, filename, lineno, line)
    if category.__module__.split(".")[0] == "edgetl":
        progress_stream().write(text)
    else:
        _buffer.write(text)
