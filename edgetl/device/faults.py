"""Test-only fault injection, read from the environment (never set in production).

``EDGETL_TEST_CRASH_AT=<stage>`` makes the process ``os._exit(137)`` when an
install reaches that stage (or ``switched``: after the pointer rename, before
the journal says so; ``recover``: during start-up recovery), the same as a
``kill -9`` or a power cut there. ``EDGETL_TEST_DISK_FULL=<where>`` (``upload``
or ``extract``) makes the next write there fail with ``ENOSPC`` after 64 KiB,
as a full disk would, deterministically and without root.
"""

from __future__ import annotations

import errno
import logging
import os

log = logging.getLogger("edgetl.agent.faults")
DISK_FULL_AFTER = 64 * 1024


def crash_point(stage: str) -> None:
    if os.environ.get("EDGETL_TEST_CRASH_AT") == stage:
        log.error("EDGETL_TEST_CRASH_AT=%s: exiting abruptly", stage)
        os._exit(137)


def check_disk(where: str, written: int) -> None:
    """Raise ENOSPC when the test asks for a full disk at ``where`` and ``written`` passed 64 KiB."""
    if written > DISK_FULL_AFTER and os.environ.get("EDGETL_TEST_DISK_FULL") == where:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
