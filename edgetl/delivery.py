"""The Python API's shipping half: export to a bundle, verify it, deploy it.

``edgetl export``, ``edgetl bundle verify`` and ``edgetl deploy`` call these
same functions. Importing this module imports no ML framework; export (host
side) imports torch inside :func:`export_bundle`, verify and deploy never do.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.errors import BundleError, DeployError, SignatureNotCheckedError, UsageError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgetl.workflow import Log, Model

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
        from edgetl.workflow import Model

        return Model(self.path)

    def deploy(self, device: str | None = None, *, token: str | None = None, **options: Any) -> Deployment:
        """:func:`deploy` this bundle."""
        return deploy(self.path, device=device, token=token, **options)


def export_bundle(run_dir: str | Path, *, format: str, log: Log | None = None, **options: Any) -> Bundle:
    """Export ``run_dir`` through the gate into a bundle (``edgetl export``); see ``Model.export``."""
    from edgetl.host.export import ExportOptions, export_run

    if log is not None:
        options["progress"] = log
    result = export_run(Path(run_dir), ExportOptions(format=format, **options))
    return Bundle(result.bundle, result)


def _reference_check(path: Path, manifest: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """Re-run the reference images on this machine when the target's runtime is here."""
    from edgetl.bundle import extract_bundle, load_runtime
    from edgetl.errors import MissingDependencyError, UnknownComponentError
    from edgetl.reference import check_reference

    if not manifest.get("reference"):
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

    path = Path(path)
    keys = [] if trust is None else [trust] if isinstance(trust, (str, Path)) else list(trust)
    unchecked = False
    try:
        report = verify_bundle(path, keys)
    except SignatureNotCheckedError as exc:
        unchecked, report = True, exc.report
    with open_bundle(path) as bundle:
        manifest = bundle.manifest
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


@dataclass
class Deployment:
    """The outcome of a deploy: one :class:`edgetl.deploy.rollout.DeviceResult` per device.

    Attributes:
        ok: True when every device ended on the new model (dry run: every check passed).
    """

    bundle: Path
    devices: list[Any] = field(default_factory=list)
    ok: bool = False
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The ``deploy --json`` document."""
        return {"bundle": str(self.bundle), "dry_run": self.dry_run, "ok": self.ok,
                "devices": [d.to_dict() for d in self.devices]}

    def failure(self) -> DeployError:
        """The error saying which devices did not end on the new model."""
        bad = [r for r in self.devices if r.result not in ("installed", "ok")]
        what = "passed the checks" if self.dry_run else "ended on the new model"
        err = DeployError(f"{len(bad)} of {len(self.devices)} device(s) not {what}: "
                          + ", ".join(f"{r.name} ({r.result})" for r in bad))
        err.deployment = self
        return err


def rollout(bundle: str | Path, *, device: str | None = None, token: str | None = None,
            token_file: str | Path | None = None, fleet: str | Path | None = None, ca: str | Path | None = None,
            parallel: int = 4, rollback: bool = True, dry_run: bool = False, log: Log | None = None) -> Deployment:
    """Deploy without raising on a failed device: the :class:`Deployment` says what happened."""
    from edgetl.deploy.rollout import DeviceTarget, deploy_fleet, load_fleet_targets
    from edgetl.device.server import read_token

    if bool(device) == bool(fleet):
        raise UsageError("give either a device URL (with its token) or a fleet file, not both or neither")
    if device:
        if token is None and token_file is None:
            raise UsageError(f"deploy to {device}: give its token (token=… or --token-file FILE)")
        targets = [DeviceTarget(device, device, token if token is not None else read_token(token_file))]
    else:
        targets = load_fleet_targets(fleet)
    results, ok = deploy_fleet(bundle, targets, ca=None if ca is None else str(ca), parallel=parallel,
                               rollback=rollback, dry_run=dry_run, log=log or (lambda message: None))
    return Deployment(Path(bundle), results, ok, dry_run)


def deploy(bundle: str | Path | Bundle, device: str | None = None, *, token: str | None = None,
           **options: Any) -> Deployment:
    """Install a bundle on a device (or a fleet) and wait until it serves: ``edgetl deploy``.

    Args:
        bundle: a bundle file or :class:`Bundle`.
        device: the agent's URL (``https://cam1:8470``); or ``fleet=FLEET.yaml`` instead.
        token: the device's token (or ``token_file=``).
        **options: ``token_file``, ``fleet``, ``ca``, ``parallel``, ``rollback``, ``dry_run``, ``log``.

    Raises:
        DeployError: a device did not end on the new model (``err.deployment`` has the details;
            the devices already changed were rolled back unless ``rollback=False``).
    """
    path = bundle.path if isinstance(bundle, Bundle) else Path(bundle)
    done = rollout(path, device=device, token=token, **options)
    if not done.ok:
        raise done.failure()
    return done

