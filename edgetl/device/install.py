"""The install state machine, journaled so a crash at any step leaves a model serving.

Stages, in order (each journaled ``begin`` then ``ok``; a failure ``failed``):

1. ``verify``: signature by one of the trusted keys, schema, every member's hash.
2. ``stage``: extract into ``staging/ID`` (no absolute paths, ``..``, links or
   devices; total size capped).
3. ``compatibility``: the target's runtime here, versions, arch, INT8 CPU features.
4. ``load``: the runtime loads the model (a TensorRT engine is built now and cached).
5. ``reference``: the bundle's reference images through THIS device's
   preprocessing and runtime, against the bundle's tolerance.
6. ``switch``: ``staging/ID`` → ``models/ID`` (rename), then the pointer file
   is replaced (rename) with current = ID, previous = the old current.

Until the pointer rename in step 6 the old model is the one on disk and in
memory; after it the new one is. Recovery at start-up therefore only needs to
ask the pointer: an unfinished install that the pointer names is finished
(``installed``), any other is undone (``failed``, its files removed).

``EDGETL_TEST_CRASH_AT=<stage>`` (or ``switched``: after the pointer rename,
before the journal says so) makes the process ``os._exit(137)`` there; tests
use it to play ``kill -9`` at every step.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from edgetl.errors import BundleError, EdgetlError, InstallError

if TYPE_CHECKING:  # pragma: no cover
    from edgetl.device.agent import Agent

log = logging.getLogger("edgetl.agent.install")
STAGES = ("verify", "stage", "compatibility", "load", "reference", "switch")


class InstallBusy(EdgetlError):
    """Another upload or install is in progress (installs are serialised)."""


def _crash_point(stage: str) -> None:
    if os.environ.get("EDGETL_TEST_CRASH_AT") == stage:
        log.error("EDGETL_TEST_CRASH_AT=%s: exiting abruptly", stage)
        os._exit(137)


class Installer:
    """Runs one install at a time in a worker thread; keeps every install's status."""

    def __init__(self, agent: "Agent"):
        self.agent = agent
        self.state, self.journal = agent.state, agent.journal
        self._busy = threading.Lock()
        self._status: dict[str, dict[str, Any]] = {}
        self._threads: dict[str, threading.Thread] = {}

    # -- upload ------------------------------------------------------------------
    def reserve(self) -> str:
        """Claim the single install slot for a new upload; return its install id."""
        if not self._busy.acquire(blocking=False):
            running = next((i for i, s in self._status.items() if s["status"] in ("receiving", "running")), "?")
            raise InstallBusy(f"an install is already in progress ({running}); wait for it to end")
        install_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
        self._status[install_id] = {"install_id": install_id, "status": "receiving", "stage": "upload",
                                    "progress": 0.0, "stages": [], "report": {}, "error": None,
                                    "started": time.time(), "finished": None}
        return install_id

    def abandon(self, install_id: str, error: str) -> None:
        """The upload was refused or broke off: forget it and free the slot."""
        self.state.upload_path(install_id).unlink(missing_ok=True)
        self._status.pop(install_id, None)
        self._busy.release()

    def start(self, install_id: str, size: int) -> None:
        """The upload is on disk: journal it and run the stages in a worker thread."""
        self.journal.append(event="install", install_id=install_id, stage="upload", status="ok", bytes=size)
        status = self._status[install_id]
        status.update(status="running", stage="verify")
        thread = threading.Thread(target=self._run, args=(install_id,), name=f"install-{install_id}", daemon=True)
        self._threads[install_id] = thread
        thread.start()

    def wait(self, install_id: str, timeout: float | None = None) -> dict[str, Any]:
        thread = self._threads.get(install_id)
        if thread is not None:
            thread.join(timeout)
        return self.status(install_id)

    # -- status ------------------------------------------------------------------
    def status(self, install_id: str) -> dict[str, Any] | None:
        """The live status, or one rebuilt from the journal for installs before a restart."""
        if install_id in self._status:
            return dict(self._status[install_id])
        records = self.journal.installs().get(install_id)
        if not records:
            return None
        last = records[-1]
        report = next((r.get("report") for r in reversed(records) if r.get("report")), {})
        return {"install_id": install_id, "status": last.get("status"), "stage": last.get("stage"),
                "progress": 1.0, "stages": [], "report": report or {}, "error": last.get("error"),
                "started": records[0]["time"], "finished": last["time"]}

    # -- the state machine ---------------------------------------------------------
    def _stage(self, install_id: str, stage: str) -> float:
        status = self._status[install_id]
        status["stage"] = stage
        status["progress"] = STAGES.index(stage) / len(STAGES)
        self.journal.append(event="install", install_id=install_id, stage=stage, status="begin")
        _crash_point(stage)
        return time.monotonic()

    def _ok(self, install_id: str, stage: str, started: float, **facts: Any) -> None:
        seconds = round(time.monotonic() - started, 4)
        self._status[install_id]["stages"].append({"stage": stage, "status": "ok", "seconds": seconds})
        self.journal.append(event="install", install_id=install_id, stage=stage, status="ok", **facts)

    def _run(self, install_id: str) -> None:
        from edgetl.bundle import extract_bundle, verify_bundle
        from edgetl.device.compat import check_compatibility
        from edgetl.device.facts import device_facts
        from edgetl.device.model import DeviceModel
        from edgetl.reference import check_reference

        status = self._status[install_id]
        report = status["report"]
        upload = self.state.upload_path(install_id)
        staging = self.state.staging_dir(install_id)
        model = None
        final: dict[str, Any] = {"status": "failed", "error": "internal error: install ended unexpectedly"}
        try:
            t = self._stage(install_id, "verify")
            verified = verify_bundle(upload, self.agent.trusted_keys)
            report["verify"] = verified
            report["signature"] = {"key_id": verified["signature"]["key_id"], "checked": True}
            self._ok(install_id, "verify", t, model_version=verified["model_version"])

            t = self._stage(install_id, "stage")
            extract_bundle(upload, staging, self.agent.max_bundle_bytes)
            self._ok(install_id, "stage", t)

            t = self._stage(install_id, "compatibility")
            import json

            manifest = json.loads((staging / "manifest.json").read_text(encoding="utf-8"))
            report["compatibility"] = check_compatibility(manifest, device_facts(), self.agent.strict_int8)
            self._ok(install_id, "compatibility", t)

            t = self._stage(install_id, "load")

            def progress(phase: str, done: float, total: float, _base=STAGES.index("load")) -> None:
                """A TensorRT engine build takes minutes: show its phase and step in the status."""
                status["detail"] = f"{phase} {done:g}/{total:g}"
                status["progress"] = (_base + min(1.0, done / total if total else 0.0)) / len(STAGES)

            model = DeviceModel.load(install_id, staging, self.state.engines_dir, progress=progress)
            report["runtime"] = model.runtime.info()
            self._ok(install_id, "load", t)

            t = self._stage(install_id, "reference")
            if not manifest.get("reference"):
                raise InstallError("the bundle has no reference set; the device cannot check it (re-export it)")
            ref = check_reference(staging, manifest, model)
            report["reference"] = ref
            if not ref["passed"]:
                first = "; ".join(ref["failures"][:3])
                raise InstallError(
                    f"reference check failed on this device: label agreement {ref['label_agreement']:.3f} "
                    f"(need >= {ref['tolerance']['label_agreement']}), max |diff| {ref['max_abs_diff']:.3g} "
                    f"(bound {ref['tolerance']['max_abs_diff']})" + (f": {first}" if first else ""))
            self._ok(install_id, "reference", t, passed=True, n=ref["n"])

            t = self._stage(install_id, "switch")
            report["switch"] = self.agent.switch_to(install_id, staging, model, crash_hook=_crash_point)
            self._ok(install_id, "switch", t)
            self.journal.append(event="install", install_id=install_id, stage="done", status="installed",
                                report=report)
            self.agent.metrics.installs.labels(result="installed").inc()
            final = {"status": "installed", "progress": 1.0}
        except Exception as exc:  # every failure leaves the previous model serving
            if model is not None and self.agent.model is not model:
                model.close()
            message = str(exc) if isinstance(exc, EdgetlError) else f"internal error: {type(exc).__name__}: {exc}"
            if not isinstance(exc, EdgetlError):
                log.exception("install %s failed", install_id)
            if isinstance(exc, BundleError) and not message.startswith(("bundle", "the bundle")):
                message = f"bundle refused: {message}"
            stage = status["stage"]
            status["stages"].append({"stage": stage, "status": "failed"})
            if self.state.pointer()["current"] != install_id:
                shutil.rmtree(staging, ignore_errors=True)
                shutil.rmtree(self.state.model_dir(install_id), ignore_errors=True)
            self.journal.append(event="install", install_id=install_id, stage=stage, status="failed",
                                error=message, report=report)
            self.agent.metrics.installs.labels(result="failed").inc()
            final = {"status": "failed", "error": message}
        finally:
            # clean up and free the slot *before* the status says the install ended, so a client that
            # sees "installed"/"failed" finds no leftovers and may upload the next bundle at once
            upload.unlink(missing_ok=True)
            self._busy.release()
        status.update(finished=time.time(), **final)

    # -- recovery --------------------------------------------------------------------
    def recover(self) -> list[dict[str, Any]]:
        """Finish or undo installs a crash interrupted; drop files no pointer names.

        Returns one ``{install_id, stage, outcome}`` per interrupted install.
        """
        pointer = self.state.pointer()
        outcomes = []
        for install_id, records in self.journal.unfinished().items():
            stage = records[-1].get("stage")
            if pointer["current"] == install_id:
                self.journal.append(event="install", install_id=install_id, stage="done", status="installed",
                                    recovered=True)
                outcome = "installed"
            else:
                self.journal.append(event="install", install_id=install_id, stage=stage, status="failed",
                                    error=f"interrupted during '{stage}' by an agent restart; "
                                          "the previous model kept serving", recovered=True)
                outcome = "failed"
            outcomes.append({"install_id": install_id, "stage": stage, "outcome": outcome})
            log.warning("recovered install %s interrupted during %s: %s", install_id, stage, outcome)
        self.state.prune({i for i in pointer.values() if i}, uploads=True)  # no upload survives a restart
        return outcomes
