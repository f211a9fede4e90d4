"""Progress for long steps: a line every few seconds, so a quiet minute never looks like a hang.

A training epoch on two CPU cores takes minutes and an accuracy-aware INT8
quantization several more; a progress bar shows that on a terminal, but in a
log file or CI (stderr not a terminal) bars are off and nothing was printed
for minutes. :class:`Heartbeat` fixes both cases with one mechanism: every
message of a step goes through :meth:`Heartbeat.log`, bars report their
position through :meth:`Heartbeat.detail`, and when nothing was printed for
``interval`` seconds a background thread prints what is running and for how
long. On a terminal a moving bar counts as output, so no line interrupts it.

The interval is ``EDGETL_PROGRESS_SECONDS`` (default 5 when stderr is not a
terminal, 15 on one; 0 turns the heartbeat off). A heartbeat that would say
the same as the previous one (same message, same position) waits a minute:
a log of a slow step is not a quarter repeats.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from edgetl import quiet

_active: list[Heartbeat] = []


def _interval(stream: Any) -> float:
    raw = os.environ.get("EDGETL_PROGRESS_SECONDS")
    if raw:
        return float(raw)
    is_tty = getattr(stream, "isatty", lambda: False)()
    return 15.0 if is_tty else 5.0


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s // 60:.0f} min {s % 60:02.0f} s"


class Heartbeat:
    """The messages of one long step, plus a line whenever it has been silent for ``interval`` seconds.

    Use as a context manager around the step; pass :meth:`log` wherever the
    step takes a ``log``/``progress`` callable.
    """

    def __init__(self, what: str, write: Callable[[str], None] | None = None, interval: float | None = None,
                 repeat_after: float = 60.0):
        self.what = what
        self.repeat_after = repeat_after  # seconds before a heartbeat may say the same thing again
        self._last_beat: tuple[str, float] = ("", 0.0)
        self._write = write or self._to_stderr
        self.interval = _interval(quiet.progress_stream()) if interval is None else interval
        self._last_message = what
        self._detail = ""
        self._start = self._touched = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _to_stderr(message: str) -> None:
        stream = quiet.progress_stream()
        stream.write(message + "\n")
        stream.flush()

    def log(self, message: str) -> None:
        """Print one progress message now (and remember it as what is running)."""
        with self._lock:
            self._last_message, self._detail = message.strip(), ""
            self._touched = time.monotonic()
        self._write(message)

    def detail(self, text: str, shown: bool = False) -> None:
        """Where the step is (e.g. ``batch 12/40``); ``shown``: a visible bar just drew it."""
        with self._lock:
            self._detail = text
            if shown:
                self._touched = time.monotonic()

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.interval)):
            now = time.monotonic()
            with self._lock:
                if now - self._touched < self.interval:
                    continue
                where = self._detail or f"still working after “{_clip(self._last_message)}”"
                said, when = self._last_beat
                if where == said and now - when < self.repeat_after:
                    continue
                self._touched, self._last_beat = now, (where, now)
                line = f"  … {self.what} {_seconds(now - self._start)}: {where}"
            self._write(line)

    def __enter__(self) -> Heartbeat:
        _active.append(self)
        if self.interval > 0:
            self._thread = threading.Thread(target=self._beat, name="edgetl-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        _active.remove(self)


def current() -> Heartbeat | None:
    """The innermost running heartbeat (bars deep in the host code report to it), or None."""
    return _active[-1] if _active else None


def note(text: str, shown: bool = False) -> None:
    """Report a position to the running heartbeat, if any (cheap no-op otherwise)."""
    beat = current()
    if beat is not None:
        beat.detail(text, shown)
