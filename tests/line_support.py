"""Aravis's fake GigE Vision camera for the line tests: started on loopback, killed after.

The fake camera answers GVCP on UDP port 3956 of 127.0.0.1 (fixed by the
GigE Vision standard), so one runs at a time; each test gives its own serial.
"""

from __future__ import annotations

import subprocess
import time

from system_support import require_program

PROGRAM, PACKAGE = "arv-fake-gv-camera-0.8", "aravis-tools"


def require_aravis() -> None:
    """Skip (fail under CI) without the fake camera or the Aravis GObject bindings, naming the package."""
    require_program(PROGRAM, PACKAGE)
    try:
        from edgetl_builtins.line.genicam import aravis

        aravis()
    except Exception as exc:  # EdgetlError naming the package
        import os

        import pytest

        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{exc}; CI=true forbids skipping")
        pytest.skip(str(exc))


class FakeCamera:
    """``arv-fake-gv-camera-0.8 -i 127.0.0.1 -s SERIAL [-r LOSS]`` as a context manager (restartable)."""

    def __init__(self, serial: str, loss_permille: int | None = None):
        self.serial, self.loss = serial, loss_permille
        self.proc: subprocess.Popen | None = None

    def start(self) -> "FakeCamera":
        args = [PROGRAM, "-i", "127.0.0.1", "-s", self.serial]
        if self.loss:
            args += ["-r", str(self.loss)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self._wait_ready()
        except BaseException:  # not left running: it would hold UDP 3956 against every later camera
            self.kill()
            raise
        return self

    def _wait_ready(self, timeout: float = 10.0) -> None:
        from edgetl_builtins.line.genicam import aravis

        arv = aravis()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{PROGRAM} exited with {self.proc.returncode} (is another one running?)")
            try:
                camera = arv.Camera.new("127.0.0.1")
                if camera.get_device_serial_number() == self.serial:
                    del camera
                    return
            except Exception:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{PROGRAM} -s {self.serial} did not answer within {timeout} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> "FakeCamera":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()
