"""The install state machine, journaled so a crash at any step leaves a model serving.

Stages, in order (each journaled ``begin`` then ``ok``; a failure ``failed``):

1. ``verify``: signature by one of the trusted keys, schema, every member's hash
   (the zip directory is checked against the member and size caps first); then
   the update policy: an older ``bundle_version`` than the serving bundle's is
   refused unless the upload allowed a downgrade, and the serving bundle itself
   ends the install here as a no-op (current and previous stay as they are).
2. ``stage``: extract into ``staging/ID`` (no absolute paths, ``..``, links or
   devices; total size capped); the manifest, the model files and every folder fsync'ed.
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

The installer does not know the :class:`edgetl.device.agent.Agent`: it gets
:class:`InstallHooks`, the few things an install may read or do to it.
Test-only fault injection (``EDGETL_TEST_CRASH_AT``, ``EDGETL_TEST_DISK_FULL``)
is described in :mod:`edgetl.device.faults`.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl.device.faults import check_disk, crash_point
from edgetl.device.journal import Journal
from edgetl.device.limits import Limits
from edgetl.device.state import StateDir, fsync_tree, read_manifest
from edgetl.errors import BundleError, EdgetlError, InstallError
from edgetl.manifest import Manifest

log = logging.getLogger("edgetl.agent.install")
STATUS_KEPT = 100  # ended installs whose full status stays in memory (older: from the journal)
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
STAGES = ("verify", "stage", "compatibility", "load", "reference", "switch")


class InstallBusy(EdgetlError):
    """Another upload or install is in progress (installs are serialised)."""


class _Unchanged(Exception):
    """The upload is the serving bundle: the install ends after verify, changing nothing."""


@dataclass
class InstallHooks:
    """What an install needs from the agent, and nothing more.

    Attributes:
        trusted_keys: ``trusted_keys()``: the public keys whose signatures are accepted now.
        limits: the agent's caps (unpacked size, member count).
        strict_int8: refuse INT8 bundles chosen for CPU features this CPU lacks.
        switch: ``switch(install_id, staging, model, crash_hook) -> report``: make the model current.
        on_result: ``on_result("installed" | "failed")``, for the metrics.
    """

    trusted_keys: Callable[[], list[Any]]
    limits: Limits
    strict_int8: bool
    switch: Callable[..., dict[str, Any]]
    on_result: Callable[[str], None] = lambda result: None


@dataclass
class _Job:
    """One install's working state, passed from stage to stage."""

    install_id: str
    upload: Path
    staging: Path
    status: dict[str, Any]
    allow_downgrade: bool
    manifest: Manifest | None = None  # validated once, when the bundle is staged
    model: Any = None

    @property
    def report(self) -> dict[str, Any]:
        return self.status["report"]


def bundle_order(manifest: Manifest | dict[str, Any] | None) -> int:
    """The monotonic version that orders bundles: ``bundle_version`` (export time in ms), or for a
    manifest written before it existed, its ``created`` time in ms (0 if unreadable).

    A dict is another agent's manifest as ``/v1/info`` sent it: read leniently, not validated,
    so a device running another edgetl version still gets an order."""
    from datetime import datetime

    if manifest is None or manifest == {}:
        return 0
    if isinstance(manifest, Manifest):
        version, created = manifest.bundle_version, manifest.created
    else:
        version, created = manifest.get("bundle_version"), manifest.get("created")
    if isinstance(version, int):
        return version
    try:
        return int(datetime.fromisoformat(str(created)).timestamp() * 1000)
    except (TypeError, ValueError):
        return 0


class Installer:
    """Runs one install at a time in a worker thread; keeps every install's status."""

    def __init__(self, state: StateDir, journal: Journal, hooks: InstallHooks):
        self.state, self.journal, self.hooks = state, journal, hooks
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

    def abandon(self, install_id: str, error: str = "") -> None:
        """The upload was refused or broke off: forget it and free the slot."""
        try:
            self.state.upload_path(install_id).unlink(missing_ok=True)
        finally:
            self._status.pop(install_id, None)
            self._busy.release()

    def start(self, install_id: str, size: int, allow_downgrade: bool = False) -> None:
        """The upload is on disk: journal it and run the stages in a worker thread."""
        self.launch(self.accept(install_id, size, allow_downgrade))

    def accept(self, install_id: str, size: int, allow_downgrade: bool = False) -> _Job:
        """Journal the finished upload and mark the install running; :meth:`launch` runs it."""
        status = self._status[install_id]
        try:
            self.journal.append(event="install", install_id=install_id, stage="upload", status="ok", bytes=size)
        except BaseException:
            self.abandon(install_id)
            raise
        status.update(status="running", stage="verify")
        return _Job(install_id, self.state.upload_path(install_id), self.state.staging_dir(install_id), status,
                    allow_downgrade)

    def launch(self, job: _Job) -> None:
        """Run an accepted install's stages in a worker thread."""
        thread = threading.Thread(target=self._run, args=(job,), name=f"install-{job.install_id}", daemon=True)
        self._threads[job.install_id] = thread
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

    # -- the stages ------------------------------------------------------------------
    def _verify(self, job: _Job) -> dict[str, Any]:
        from edgetl.bundle import verify_bundle

        verified = verify_bundle(job.upload, self.hooks.trusted_keys(), max_bytes=self.hooks.limits.unpacked_bytes,
                                 max_members=self.hooks.limits.members)
        verified["path"] = f"uploads/{job.upload.name}"  # no absolute device paths in reports
        job.report["verify"] = verified
        job.report["signature"] = {"key_id": verified["signature"]["key_id"], "checked": True}
        self._apply_policy(job, verified)
        return {"model_version": verified["model_version"]}

    def _apply_policy(self, job: _Job, verified: dict[str, Any]) -> None:
        """Refuse a downgrade (unless allowed); a re-deploy of the serving bundle changes nothing.

        ``verified`` is :func:`edgetl.bundle.verify_bundle`'s report of the validated manifest: the
        bundle is not opened a second time."""
        current = self.state.pointer()["current"]
        if not current:
            return
        serving_raw = (self.state.model_dir(current) / "manifest.json").read_bytes()
        if hashlib.sha256(serving_raw).hexdigest() == verified["manifest_sha256"]:
            raise _Unchanged()
        new_order = bundle_order(verified)
        serving = self.state.model_manifest(current)
        old_order = bundle_order(serving)
        job.report["policy"] = {"bundle_version": new_order, "serving_bundle_version": old_order,
                                "downgrade": new_order < old_order, "allowed": job.allow_downgrade}
        if new_order < old_order and not job.allow_downgrade:
            raise InstallError(f"downgrade refused: bundle_version {new_order} ({verified['model_version']}) is "
                               f"older than the serving {old_order} ({serving.model_version if serving is not None else None}); deploy "
                               "with --allow-downgrade to install it anyway")

    def _extract(self, job: _Job) -> dict[str, Any]:
        from edgetl.bundle import extract_bundle

        extract_bundle(job.upload, job.staging, self.hooks.limits.unpacked_bytes,
                       max_members=self.hooks.limits.members, on_write=lambda n: check_disk("extract", n))
        job.manifest = read_manifest(job.staging)  # the one validated manifest the later stages read
        # what serving needs after a power cut: the manifest, the model files and the folders naming them
        fsync_tree(job.staging, ["manifest.json", *job.manifest.target.files])
        return {}

    def _compatibility(self, job: _Job) -> dict[str, Any]:
        from edgetl.device.compat import check_compatibility
        from edgetl.device.facts import device_facts

        job.report["compatibility"] = check_compatibility(job.manifest, device_facts(), self.hooks.strict_int8)
        return {}

    def _load(self, job: _Job) -> dict[str, Any]:
        from edgetl.device.model import DeviceModel

        status, base = job.status, STAGES.index("load")

        def progress(phase: str, done: float, total: float) -> None:
            """A TensorRT engine build takes minutes: show its phase and step in the status."""
            status["detail"] = f"{phase} {done:g}/{total:g}"
            status["progress"] = (base + min(1.0, done / total if total else 0.0)) / len(STAGES)

        job.model = DeviceModel.load(job.install_id, job.staging, self.state.engines_dir, progress=progress,
                                     manifest=job.manifest)
        job.report["runtime"] = job.model.runtime.info()
        return {}

    def _reference(self, job: _Job) -> dict[str, Any]:
        from edgetl.reference import check_reference

        if job.manifest.reference is None:
            raise InstallError("the bundle has no reference set; the device cannot check it (re-export it)")
        self._check_reference_images(job)
        ref = check_reference(job.staging, job.manifest, job.model)
        job.report["reference"] = ref
        if ref["n"] == 0:
            raise InstallError("reference check failed: the bundle's reference set is empty (0 images); "
                               "re-export it with reference images")
        if not ref["passed"]:
            first = "; ".join(ref["failures"][:3])
            raise InstallError(
                f"reference check failed on this device: label agreement {ref['label_agreement']:.3f} "
                f"(need >= {ref['tolerance']['label_agreement']}), max |diff| {ref['max_abs_diff']:.3g} "
                f"(bound {ref['tolerance']['max_abs_diff']})" + (f": {first}" if first else ""))
        return {"passed": True, "n": ref["n"]}

    def _check_reference_images(self, job: _Job) -> None:
        """Every reference image is a listed member of the bundle (no path outside it) and passes the
        checks of a ``/v1/predict`` body (pixel cap, decode work) before the reference stage decodes it."""
        from edgetl.device.images import check_image
        from edgetl.errors import DataError
        from edgetl.reference import read_outputs_doc

        members = set(job.manifest.files)
        limits = self.hooks.limits
        for item in read_outputs_doc(job.staging, job.manifest):
            name = item.get("file") if isinstance(item, dict) else None
            if not isinstance(name, str) or name not in members:
                raise InstallError(f"reference image {name!r}: not a member of the bundle (the reference set "
                                   "may only name the bundle's own files)")
            try:
                check_image((job.staging / name).read_bytes(), limits.image_pixels, max_scans=limits.jpeg_max_scans)
            except DataError as exc:
                raise InstallError(f"reference image {name}: {str(exc).removeprefix('request body: ')}") from None

    def _switch(self, job: _Job) -> dict[str, Any]:
        job.report["switch"] = self.hooks.switch(job.install_id, job.staging, job.model, crash_hook=crash_point)
        return {}

    # -- the state machine ---------------------------------------------------------
    def _stage_table(self) -> tuple[tuple[str, Callable[[_Job], dict[str, Any]]], ...]:
        return (("verify", self._verify), ("stage", self._extract), ("compatibility", self._compatibility),
                ("load", self._load), ("reference", self._reference), ("switch", self._switch))

    def _step(self, job: _Job, stage: str, run: Callable[[_Job], dict[str, Any]]) -> None:
        job.status["stage"] = stage
        job.status["progress"] = STAGES.index(stage) / len(STAGES)
        self.journal.append(event="install", install_id=job.install_id, stage=stage, status="begin",
                            durable=False)
        crash_point(stage)
        started = time.monotonic()
        facts = run(job)
        seconds = round(time.monotonic() - started, 4)
        job.status["stages"].append({"stage": stage, "status": "ok", "seconds": seconds})
        self.journal.append(event="install", install_id=job.install_id, stage=stage, status="ok", durable=False,
                            **facts)

    def _run(self, job: _Job) -> None:
        final: dict[str, Any] = {"status": "failed", "error": "internal error: install ended unexpectedly"}
        try:
            try:
                for stage, run in self._stage_table():
                    self._step(job, stage, run)
            except _Unchanged:
                job.report["switch"] = self._unchanged_report()
                job.status["stages"].append({"stage": "verify", "status": "ok", "unchanged": True})
            self.journal.append(event="install", install_id=job.install_id, stage="done", status="installed",
                                report=job.report)
            self.hooks.on_result("installed")
            final = {"status": "installed", "progress": 1.0}
        except Exception as exc:  # every failure leaves the previous model serving
            final = self._fail(job, exc)
        finally:
            # clean up and free the slot *before* the status says the install ended, so a client that
            # sees "installed"/"failed" finds no leftovers and may upload the next bundle at once
            job.upload.unlink(missing_ok=True)
            self._busy.release()
        job.status.update(finished=time.time(), **final)
        self._forget_old()

    def _forget_old(self) -> None:
        """Keep the live status of at most :data:`STATUS_KEPT` ended installs in memory; an older
        one is rebuilt from the journal when asked for."""
        ended = [i for i, st in self._status.items() if st.get("finished")]
        for install_id in ended[:-STATUS_KEPT] if len(ended) > STATUS_KEPT else ():
            self._status.pop(install_id, None)
            self._threads.pop(install_id, None)

    def _unchanged_report(self) -> dict[str, Any]:
        pointer = self.state.pointer()
        serving = self.state.model_manifest(pointer["current"])
        version = serving.model_version if serving is not None else None
        return {"from": version, "to": version, "previous_kept": bool(pointer["previous"]), "unchanged": True}

    def _fail(self, job: _Job, exc: Exception) -> dict[str, Any]:
        if job.model is not None and job.model.install_id == job.install_id \
                and self.state.pointer()["current"] != job.install_id:
            job.model.close()
        disk_full = isinstance(exc, OSError) and exc.errno in DISK_ERRORS
        if disk_full:
            message = (f"the device's disk is full (507 Insufficient Storage) during '{job.status['stage']}' "
                       f"({exc.strerror}); free space and deploy again")
        else:
            message = str(exc) if isinstance(exc, EdgetlError) else f"internal error: {type(exc).__name__}: {exc}"
        if not isinstance(exc, EdgetlError) and not disk_full:
            log.exception("install %s failed", job.install_id)
        message = message.replace(str(job.upload), "the bundle").replace(str(self.state.root), "STATE")
        if isinstance(exc, BundleError) and not message.startswith(("bundle", "the bundle")):
            message = f"bundle refused: {message}"
        stage = job.status["stage"]
        job.status["stages"].append({"stage": stage, "status": "failed"})
        if self.state.pointer()["current"] != job.install_id:
            shutil.rmtree(job.staging, ignore_errors=True)
            shutil.rmtree(self.state.model_dir(job.install_id), ignore_errors=True)
        try:
            self.journal.append(event="install", install_id=job.install_id, stage=stage, status="failed",
                                error=message, report=job.report)
        except OSError as journal_exc:  # a full disk must not keep the slot or hide the first error
            log.error("install %s: cannot journal the failure (%s)", job.install_id, journal_exc)
        self.hooks.on_result("failed")
        return {"status": "failed", "error": message}

    # -- recovery --------------------------------------------------------------------
    def recover(self) -> list[dict[str, Any]]:
        """Finish or undo installs a crash interrupted; drop files no pointer names and stale temp files.

        Returns one ``{install_id, stage, outcome}`` per interrupted install.
        """
        pointer = self.state.pointer()
        outcomes = []
        for install_id, records in self.journal.unfinished().items():
            stage = records[-1].get("stage")
            crash_point("recover")
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
