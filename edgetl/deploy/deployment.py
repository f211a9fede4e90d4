"""``edgetl.deploy(bundle, device=…, token=…)``: one device or a fleet, and what each did.

``edgetl deploy`` calls :func:`rollout`, the same function; :func:`deploy`
raises when a device did not end on the new model. No torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.errors import DeployError, UsageError

__all__ = ["Deployment", "deploy", "rollout"]


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
            token_file: str | Path | None = None, fleet: str | Path | None = None,
            log: Callable[[str], None] | None = None, **options: Any) -> Deployment:
    """Deploy without raising on a failed device: the :class:`Deployment` says what happened.

    ``options`` go to :func:`edgetl.deploy.rollout.deploy_fleet` as they are
    (``ca``, ``parallel``, ``rollback``, ``dry_run``, …), so the API and
    ``edgetl deploy`` always take the same ones.
    """
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
    if options.get("ca") is not None:
        options["ca"] = str(options["ca"])
    results, ok = deploy_fleet(bundle, targets, log=log or (lambda message: None), **options)
    return Deployment(Path(bundle), results, ok, bool(options.get("dry_run")))


def deploy(bundle: Any, device: str | None = None, *, token: str | None = None, **options: Any) -> Deployment:
    """Install a bundle on a device (or a fleet) and wait until it serves: ``edgetl deploy``.

    Args:
        bundle: a bundle file, or a :class:`edgetl.workflow.bundle.Bundle`.
        device: the agent's URL (``https://cam1:8470``); or ``fleet=FLEET.yaml`` instead.
        token: the device's token (or ``token_file=``).
        **options: ``token_file``, ``fleet``, ``log``, and what ``deploy_fleet`` takes (``ca``,
            ``parallel``, ``rollback``, ``dry_run``, …).

    Raises:
        DeployError: a device did not end on the new model (``err.deployment`` has the details;
            the devices already changed were rolled back unless ``rollback=False``).
    """
    path = Path(getattr(bundle, "path", bundle))
    done = rollout(path, device=device, token=token, **options)
    if not done.ok:
        raise done.failure()
    return done

