"""Test-only fault injection, read from the environment (never set in production).

``EDGETL_TEST_CRASH_AT=<stage>`` makes the process ``os._exit(137)`` when an
install reaches that stage (or ``switched``: after the pointer rename, before
the journal says so; ``recover``: during start-up recovery), the same as a
``kill -9`` or a power cut there. ``EDGETL_TEST_DISK_FULL=<where>[:<bytes>]`` (``upload``
or ``extract``) makes writes there fail with ``ENOSPC`` once more than
``bytes`` (default 64 KiB) were written, as a full disk would, deterministically
and without root.
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
    """Raise ENOSPC when the test asks for a full disk at ``where`` and ``written`` passed its figure."""
    setting = os.environ.get("EDGETL_TEST_DISK_FULL")
    if not setting:
        return
    name, _, after = setting.partition(":")
    if name == where and written > (int(after) if after else DISK_FULL_AFTER):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
