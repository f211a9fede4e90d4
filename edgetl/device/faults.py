"""Test-only fault injection, read from the environment (never set in production).

``EDGETL_TEST_CRASH_AT=<stage>`` makes the process ``os._exit(137)`` when an
install reaches that stage (or ``switched``: after the pointer rename, before
the journal says so; ``recover``: during start-up recovery), the same as a
``kill -9`` or a power cut there. ``EDGETL_TEST_CRASH_AT=<stage>:freeze`` parks
the install thread that reached the stage instead, for good (install threads are
daemons, so the process still ends): it writes nothing more, so the disk is left as
a ``kill -9`` there leaves it, and a test can start the next agent on that state
directory in the same process: recovery reads the same files, without a second
process (only surviving a real kill needs one). ``EDGETL_TEST_DISK_FULL=<where>[:<bytes>]`` (``upload``, ``pull``
or ``extract``) makes writes there fail with ``ENOSPC`` once more than
``bytes`` (default 64 KiB) were written, as a full disk would, deterministically
and without root.

Unset, each check is one environment lookup.
"""

from __future__ import annotations

import errno
import logging
import os
import threading

log = logging.getLogger("edgetl.agent.faults")
DISK_FULL_AFTER = 64 * 1024
frozen: list[str] = []  # the stages at which a thread parked (``:freeze``), in order; a test may clear it


def crash_point(stage: str) -> None:
    setting = os.environ.get("EDGETL_TEST_CRASH_AT")
    if not setting:
        return
    name, _, how = setting.partition(":")
    if name != stage:
        return
    if how == "freeze":
        log.error("EDGETL_TEST_CRASH_AT=%s: this thread stops here", setting)
        frozen.append(stage)
        threading.Event().wait()  # for good: a killed process never goes on either
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
