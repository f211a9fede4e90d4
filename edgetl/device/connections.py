"""Connection guard: caps and read timeouts uvicorn does not have, as its HTTP protocol class.

uvicorn (0.54, h11) arms its keep-alive timer only *between* requests and
cancels it on the first byte of the next one, so a client that sends half a
request head, or half a body, holds its connection (and a file descriptor)
forever; ``limit_concurrency`` answers 503 to *every* client once the count is
reached, so it hands the device to whoever opens the most sockets. This
protocol (``uvicorn.Config(http=guarded_protocol(guard))``) adds, per process:

- a cap on open connections and a smaller one per client address: a connection
  over either is answered ``503`` and closed at once (it costs one write);
- a header timeout: a request head must be complete within ``header_timeout_s``
  of the connection opening or of its first byte;
- a body timeout: a request body that receives nothing for ``body_idle_s`` (while
  the app is reading it: back-pressure from a busy app does not count) is cut off.

With TLS the guard sees a connection once its handshake is done (asyncio
closes handshakes that take over 60 s). Refusals and timeouts are logged at
most once per cause per :data:`LOG_INTERVAL_S`, with the count, and so are
asyncio's "out of file descriptors" accept errors (:func:`quiet_accept_errors`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("edgetl.agent.connections")
LOG_INTERVAL_S = 60.0
TICK_S = 0.5


class RateLimitedLog:
    """One log line per cause per interval: the first at once, then a count of the rest."""

    def __init__(self, logger: logging.Logger, interval_s: float = LOG_INTERVAL_S):
        self.logger, self.interval_s = logger, interval_s
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def note(self, cause: str, message: str, level: int = logging.WARNING) -> bool:
        """Log ``message`` unless ``cause`` was logged less than an interval ago; True if logged."""
        now = time.monotonic()
        last = self._last.get(cause)
        if last is not None and now - last < self.interval_s:
            self._suppressed[cause] += 1
            return False
        more = self._suppressed.pop(cause, 0)
        self._last[cause] = now
        self.logger.log(level, "%s%s", message,
                        f" ({more} more since the last such line)" if more else "")
        return True


class _OnePerCause(logging.Filter):
    """For asyncio's logger: an accept error (EMFILE, ENFILE…) at most once per interval, no traceback."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S):
        super().__init__()
        self.limiter = RateLimitedLog(log, interval_s)

    def filter(self, record: logging.LogRecord) -> bool:
        if "socket.accept()" not in str(record.msg):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        cause = type(exc).__name__ + str(getattr(exc, "errno", "")) if exc else record.getMessage()[:60]
        self.limiter.note(cause, f"cannot accept connections: {exc or record.getMessage()} "
                                 "(file descriptors exhausted? see LimitNOFILE, --max-connections)",
                          logging.ERROR)
        return False


def quiet_accept_errors(interval_s: float = LOG_INTERVAL_S) -> None:
    """Replace asyncio's per-attempt accept tracebacks (megabytes a second under EMFILE) with one line
    per cause per interval."""
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _OnePerCause) for f in logger.filters):
        logger.addFilter(_OnePerCause(interval_s))


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted`` (never above the hard limit); return
    the soft limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


@dataclass
class GuardSettings:
    """The guard's figures (flags of ``edgetl agent serve`` in brackets).

    Attributes:
        max_connections: open connections in all [--max-connections].
        max_per_client: open connections from one client address [--max-connections-per-client].
        header_timeout_s: seconds for a request head to arrive in full [--header-timeout].
        body_idle_s: seconds a request body may send nothing while it is read [2 x --upload-idle-timeout:
            the upload route answers 408 itself after one].
    """

    max_connections: int = 1024
    max_per_client: int = 64
    header_timeout_s: float = 10.0
    body_idle_s: float = 60.0


class ConnectionGuard:
    """The open connections of one server, per client address, and their deadlines."""

    def __init__(self, settings: GuardSettings):
        self.settings = settings
        self.per_client: Counter[str] = Counter()
        self.open: set["GuardedH11"] = set()
        self.refused: Counter[str] = Counter()
        self.timed_out: Counter[str] = Counter()
        self.log = RateLimitedLog(log)
        self._ticking = False

    def admit(self, conn: "GuardedH11", host: str) -> str | None:
        """None if ``conn`` may proceed, else why it is refused."""
        if len(self.open) >= self.settings.max_connections:
            return f"the agent has {len(self.open)} open connections (--max-connections)"
        if self.per_client[host] >= self.settings.max_per_client:
            return f"{host} has {self.per_client[host]} open connections (--max-connections-per-client)"
        self.per_client[host] += 1
        self.open.add(conn)
        if not self._ticking:
            self._ticking = True
            asyncio.get_running_loop().call_later(TICK_S, self._tick)
        return None

    def release(self, conn: "GuardedH11", host: str) -> None:
        if conn in self.open:
            self.open.discard(conn)
            self.per_client[host] -= 1
            if self.per_client[host] <= 0:
                del self.per_client[host]

    def note_refused(self, host: str, reason: str) -> None:
        cause = "total" if "--max-connections)" in reason else "per-client"
        self.refused[cause] += 1
        self.log.note(f"refused-{cause}", f"refusing connections: {reason}")

    def _tick(self) -> None:
        now = time.monotonic()
        for conn in list(self.open):
            why = conn.overdue(now)
            if why:
                self.timed_out[why] += 1
                self.log.note(f"timeout-{why}", f"closing a connection from {conn.host}: {why}")
                conn.cut()
        if self.open:
            asyncio.get_running_loop().call_later(TICK_S, self._tick)
        else:
            self._ticking = False


REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 5\r\n"
           b"connection: close\r\ncontent-length: %d\r\n\r\n%s")


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol under a :class:`ConnectionGuard` (see the module docstring)."""

    guard: ConnectionGuard  # set by :func:`guarded_protocol`

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peer = transport.get_extra_info("peername")
        self.host = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else "unix"
        reason = self.guard.admit(self, self.host)
        self._refused = reason is not None
        if reason is not None:
            self.guard.note_refused(self.host, reason)
            if transport.get_extra_info("sslcontext") is not None:
                # a TLS close waits up to 30 s for the peer's close_notify, holding a 256 KiB buffer:
                # 2,000 refused handshakes held 420 MiB that way. Drop it at once instead.
                transport.abort()
                return
            body = b'{"error": "too many connections; retry later"}'
            transport.write(REFUSAL % (len(body), body))
            transport.close()
            return
        self._waiting_since: float | None = time.monotonic()  # for a request head
        self._last_data = time.monotonic()
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        now = time.monotonic()
        self._last_data = now
        if self._waiting_since is None and self.conn.their_state is h11.IDLE:
            self._waiting_since = now  # the first byte of the next request head
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._waiting_since = None  # the head is complete

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self.guard.release(self, self.host)
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        # the next request's head is timed from its first byte; an idle connection is uvicorn's
        # keep-alive timer's (re-armed here); a pipelined head already buffered is timed from now
        self._waiting_since = None
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            self._waiting_since = time.monotonic()

    def overdue(self, now: float) -> str | None:
        """Why this connection should be cut now, or None."""
        settings = self.guard.settings
        if self._waiting_since is not None and now - self._waiting_since > settings.header_timeout_s:
            return f"request head incomplete after {settings.header_timeout_s:g} s (--header-timeout)"
        if (self.conn.their_state is h11.SEND_BODY and not self.flow.read_paused
                and now - self._last_data > settings.body_idle_s):
            return f"request body idle for {settings.body_idle_s:g} s (2 x --upload-idle-timeout)"
        return None

    def cut(self) -> None:
        """Drop the connection (nothing is owed to a client that did not finish its request)."""
        self.guard.release(self, self.host)
        self.transport.abort()


def guarded_protocol(settings: GuardSettings) -> type[GuardedH11]:
    """A protocol class for ``uvicorn.Config(http=…)`` with its own guard (one per server)."""
    return type("GuardedH11", (GuardedH11,), {"guard": ConnectionGuard(settings)})
