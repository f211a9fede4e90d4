"""Bundles in the Python API: export a run into one, verify it, load it, deploy it.

``edgetl export`` and ``edgetl bundle verify`` call these same functions.
Importing this module imports no ML framework; export (host side) imports
torch inside :func:`export_bundle`, verify never does.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.errors import BundleError, SignatureNotCheckedError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgetl.deploy.deployment import Deployment
    from edgetl.manifest import Manifest
    from edgetl.workflow.model import Model
    from edgetl.workflow.training import Log

DEFAULT_MAX_MB = 2048


class Bundle:
    """A bundle file (``.edgetl``): a gated model, its reference set, maybe a signature.

    Attributes:
        path: the bundle file.
        result: the export's :class:`edgetl.host.export.ExportResult` when this
            process made it (gate attempts, stages), else None.
    """

    def __init__(self, path: str | Path, result: Any = None):
        self.path = Path(path)
        self.result = result
        self._manifest: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"Bundle({str(self.path)!r})"

    @property
    def manifest(self) -> dict[str, Any]:
        """The bundle's manifest (read on first use; not verified: see :meth:`verify`)."""
        if self._manifest is None:
            from edgetl.bundle import open_bundle

            with open_bundle(self.path) as opened:
                self._manifest = dict(opened.manifest)
        return self._manifest

    def verify(self, trust: Any = None, *, reference: bool = True, max_bundle_mb: int = DEFAULT_MAX_MB
               ) -> dict[str, Any]:
        """Check schema, member hashes, the signature against ``trust`` and the reference images here.

        Args:
            trust: a public key file (``NAME.pub``) or a list of them; None checks everything but
                the signature (the report then says ``signature.checked: false`` and ``ok: false``).
            reference: re-run the reference images with this machine's runtime (when installed).

        Returns:
            The ``bundle verify --json`` report; ``ok`` is True only when everything was checked.

        Raises:
            BundleError: tampered members, a bad or untrusted signature, a failed reference check.
        """
        return verify_report(self.path, trust, reference=reference, max_bytes=max_bundle_mb << 20)

    def load(self) -> Model:
        """The bundle as a :class:`edgetl.workflow.Model` (its target's runtime, no torch)."""
        from edgetl.workflow.model import Model

        return Model(self.path)

    def deploy(self, device: str | None = None, *, token: str | None = None, **options: Any) -> Deployment:
        """``edgetl.deploy`` this bundle (:func:`edgetl.deploy.deployment.deploy`)."""
        from edgetl.deploy.deployment import deploy

        return deploy(self.path, device=device, token=token, **options)

    def push(self, target: str, *, insecure: bool = False, ca: str | Path | None = None,
             auth_file: str | Path | None = None) -> dict[str, Any]:
        """``edgetl push``: store this bundle in an OCI registry under ``oci://HOST/REPO:TAG``.

        Returns ``{ref, digest, bundle_digest, size, annotations}`` (``digest``: the manifest's,
        what devices pulling the tag report). See :func:`edgetl.device.oci.push_bundle`.
        """
        from edgetl.device.oci import push_bundle

        return push_bundle(self.path, target, insecure=insecure, ca=ca, auth_file=auth_file)


def export_bundle(run_dir: str | Path, *, format: str, log: Log | None = None, **options: Any) -> Bundle:
    """Export ``run_dir`` through the gate into a bundle (``edgetl export``); see ``Model.export``."""
    from edgetl.host.export import ExportOptions, export_run

    if log is not None:
        options["progress"] = log
    result = export_run(Path(run_dir), ExportOptions(format=format, **options))
    return Bundle(result.bundle, result)


def _reference_check(path: Path, manifest: Manifest, max_bytes: int) -> dict[str, Any]:
    """Re-run the reference images on this machine when the target's runtime is here."""
    from edgetl.bundle import extract_bundle, load_runtime
    from edgetl.errors import MissingDependencyError, UnknownComponentError
    from edgetl.reference import check_reference

    if manifest.reference is None:
        return {"status": "skipped", "reason": "the bundle has no reference set"}
    with tempfile.TemporaryDirectory(prefix="edgetl-verify-") as tmp:
        extract_bundle(path, Path(tmp), max_bytes)
        try:
            runtime = load_runtime(Path(tmp), manifest)
        except (MissingDependencyError, UnknownComponentError) as exc:
            return {"status": "skipped", "reason": str(exc)}
        try:
            result = check_reference(Path(tmp), manifest, runtime)
        finally:
            runtime.close()
    result["status"] = "passed" if result["passed"] else "failed"
    return result


def verify_report(path: str | Path, trust: Any = None, *, reference: bool = True,
                  max_bytes: int = DEFAULT_MAX_MB << 20, check: bool = True) -> dict[str, Any]:
    """The ``bundle verify`` report: ``{…verify_bundle's facts, reference: {status, …}, ok}``.

    Raises on tampering or a bad signature, and (``check``) on a failed
    reference check; a missing ``trust`` is not an error here (``ok`` is False
    and ``signature.checked`` False).
    """
    from edgetl.bundle import open_bundle, verify_bundle
    from edgetl.manifest import as_manifest

    path = Path(path)
    keys = [] if trust is None else [trust] if isinstance(trust, (str, Path)) else list(trust)
    unchecked = False
    try:
        report = verify_bundle(path, keys)
    except SignatureNotCheckedError as exc:
        unchecked, report = True, exc.report
    with open_bundle(path) as bundle:
        manifest = as_manifest(bundle.manifest)  # verify_bundle validated it
    report["reference"] = (_reference_check(path, manifest, max_bytes) if reference
                           else {"status": "skipped", "reason": "--no-reference"})
    report["ok"] = not unchecked and report["reference"]["status"] != "failed"
    if check and report["reference"]["status"] == "failed":
        raise reference_failure(path, report)
    return report


def reference_failure(path: str | Path, report: dict[str, Any]) -> BundleError:
    """The error for a reference check that failed on this machine (first failures named)."""
    err = BundleError(f"{path}: reference check failed on this machine: "
                      + "; ".join(report["reference"].get("failures", [])[:3]))
    err.report = report
    return err
