"""Rollouts: one device, or a fleet with a canary, bounded parallelism and rollback on failure.

Fleet order: the first device of the fleet file is the
canary; if it ends on the new model, the rest go ``parallel`` at a time. At
the first failure no further device starts, and every device this rollout
changed is rolled back (``--no-rollback`` keeps them); a device that had no
model before keeps the new one, and the summary says so. ``dry_run`` only
checks reachability, the token, compatibility and versions.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgetl.deploy.client import DeviceClient
from edgetl.errors import ConfigError, DeployError, EdgetlError
from edgetl.manifest import Manifest, as_manifest


@dataclass
class DeviceTarget:
    name: str
    url: str
    token: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class DeviceResult:
    """What happened on one device.

    Attributes:
        result: ``installed``, ``failed``, ``rolled_back``, ``kept`` (changed, no previous
            model to return to), ``skipped`` (not started after a failure), ``ok`` / ``unreachable``
            / ``incompatible`` (dry run).
        before, after: the model_version serving before and after.
        report: the device's verification report (install status ``report``).
    """

    name: str
    url: str
    result: str
    before: str | None = None
    after: str | None = None
    seconds: float = 0.0
    error: str | None = None
    install_id: str | None = None
    report: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_fleet_targets(path: str | Path) -> list[DeviceTarget]:
    """Read the fleet file; tokens come from ``token_file`` (relative to the fleet file) or ``token_env``."""
    from edgetl.config import load_fleet
    from edgetl.device.server import read_token

    path = Path(path)
    fleet = load_fleet(path)
    targets = []
    for device in fleet.devices:
        if device.token_file:
            token_path = Path(device.token_file)
            if not token_path.is_absolute():
                token_path = path.parent / token_path
            token = read_token(token_path)
        else:
            token = os.environ.get(device.token_env or "", "").strip()
            if not token:
                raise ConfigError(f"{path}: device '{device.name}': environment variable {device.token_env} "
                                  "is not set (its token)")
        targets.append(DeviceTarget(device.name, device.url, token, dict(device.labels)))
    return targets


def _serving(info: dict[str, Any]) -> str | None:
    current = info.get("current")
    return current.get("model_version") if current else None


def install_on(target: DeviceTarget, bundle: Path, ca: str | None,
               log: Callable[[str], None] = lambda m: None, allow_downgrade: bool = False) -> DeviceResult:
    """Upload, follow the install, confirm the device serves the new model."""
    from edgetl.bundle import open_bundle

    with open_bundle(bundle) as opened:
        new_version = as_manifest(opened.manifest, f"{Path(bundle).name}: manifest.json").model_version
    start = time.monotonic()
    result = DeviceResult(target.name, target.url, "failed")
    try:
        with DeviceClient(target.url, target.token, ca=ca, name=target.name) as client:
            result.before = _serving(client.info())
            result.install_id = client.upload(bundle, allow_downgrade=allow_downgrade)
            log(f"{target.name}: uploaded, install {result.install_id}")

            def progress(status: dict[str, Any]) -> None:
                detail = f"  {status['detail']}" if status.get("detail") else ""
                log(f"{target.name}: {status['stage']:<13} {status['progress'] * 100:5.1f} %{detail}")

            final = client.wait_install(result.install_id, progress)
            result.report = final.get("report") or {}
            result.warnings = list((result.report.get("compatibility") or {}).get("warnings") or [])
            result.after = _serving(client.info())
            if final["status"] == "installed" and result.after == new_version:
                result.result = "installed"
            else:
                result.error = final.get("error") or (f"the device serves {result.after}, not {new_version}")
    except EdgetlError as exc:
        result.error = str(exc)
    result.seconds = round(time.monotonic() - start, 3)
    return result


def check_on(target: DeviceTarget, manifest: Manifest, ca: str | None, size_bytes: int) -> DeviceResult:
    """Dry run: reachable, token accepted, compatible, and which version it would replace.

    ``size_bytes`` is the bundle file's size, checked against the device's upload cap.

    ``result`` names the first check that failed: ``unreachable``, ``unauthorized``,
    ``incompatible``; ``ok`` when all pass.
    """
    from edgetl.device.compat import check_compatibility
    from edgetl.device.install import bundle_order

    start = time.monotonic()
    result = DeviceResult(target.name, target.url, "ok")
    with DeviceClient(target.url, target.token, ca=ca, name=target.name) as client:
        for step, call in (("unreachable", client.health), ("unauthorized", client.info)):
            try:
                info = call()
            except DeployError as exc:
                result.result, result.error = step, str(exc)
                result.seconds = round(time.monotonic() - start, 3)
                return result
    result.before = _serving(info)
    try:
        compat = check_compatibility(manifest, info["device"])
        result.report = {"compatibility": compat}
        result.warnings = list(compat["warnings"])
    except EdgetlError as exc:
        result.result, result.error = "incompatible", str(exc)
    if size_bytes > info.get("max_bundle_bytes", size_bytes):
        result.result = "incompatible"
        result.error = f"the bundle ({size_bytes} bytes) is over the device's limit"
    if result.before == manifest.model_version:
        result.warnings.append("already serving this model_version")
    if bundle_order(manifest) < bundle_order(info.get("current")):
        result.warnings.append("older than the serving bundle (bundle_version): refused unless --allow-downgrade")
    result.seconds = round(time.monotonic() - start, 3)
    return result


def _roll_back_changed(results: list[DeviceResult], targets: list[DeviceTarget], ca: str | None,
                       log: Callable[[str], None]) -> None:
    """After a failure: roll back every device this rollout changed (one with no model before keeps it)."""
    by_name = {t.name: t for t in targets}
    for res in results:
        if res.result != "installed":
            continue
        if res.before is None:
            res.result = "kept"
            res.error = "had no model before this rollout: keeps the new one"
            continue
        try:
            with DeviceClient(res.url, by_name[res.name].token, ca=ca, name=res.name) as client:
                client.rollback()
                res.after = _serving(client.info())
            res.result = "rolled_back"
            log(f"{res.name}: rolled back to {res.after}")
        except DeployError as exc:
            res.error = f"rollback failed: {exc}"


def deploy_fleet(bundle: str | Path, targets: list[DeviceTarget], ca: str | None = None, parallel: int = 4,
                 rollback: bool = True, dry_run: bool = False,
                 log: Callable[[str], None] = lambda m: None,
                 allow_downgrade: bool = False) -> tuple[list[DeviceResult], bool]:
    """Roll ``bundle`` out to ``targets``; return (one result per device, True if all ended on it).

    ``allow_downgrade`` lets devices serving a newer ``bundle_version`` install it anyway.
    """
    from edgetl.bundle import open_bundle, verify_bundle
    from edgetl.errors import SignatureNotCheckedError

    bundle = Path(bundle)
    try:  # catch a corrupt file here, before any device sees it (signature: each device checks its keys)
        verify_bundle(bundle, None)
    except SignatureNotCheckedError:
        pass
    with open_bundle(bundle) as opened:
        manifest = as_manifest(opened.manifest, f"{bundle.name}: manifest.json")
    size_bytes = bundle.stat().st_size
    if parallel < 1:
        raise ConfigError(f"--parallel must be at least 1 (got {parallel})")
    if dry_run:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            results = list(pool.map(lambda t: check_on(t, manifest, ca, size_bytes), targets))
        return results, all(r.result == "ok" for r in results)

    results: dict[str, DeviceResult] = {}
    canary, rest = targets[0], targets[1:]
    log(f"canary: {canary.name}")
    results[canary.name] = install_on(canary, bundle, ca, log, allow_downgrade)
    failed = threading.Event()
    if results[canary.name].result != "installed":
        failed.set()

    def one(target: DeviceTarget) -> None:
        if failed.is_set():
            results[target.name] = DeviceResult(target.name, target.url, "skipped",
                                                error="not started: an earlier device failed")
            return
        res = install_on(target, bundle, ca, log, allow_downgrade)
        results[target.name] = res
        if res.result != "installed":
            failed.set()

    if rest and not failed.is_set():
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            list(pool.map(one, rest))
    for target in rest:
        results.setdefault(target.name, DeviceResult(target.name, target.url, "skipped",
                                                     error="not started: the canary failed"))
    if failed.is_set() and rollback:
        _roll_back_changed(list(results.values()), targets, ca, log)
    ordered = [results[t.name] for t in targets]
    new_version = manifest.model_version
    return ordered, all(r.result == "installed" and r.after == new_version for r in ordered)
