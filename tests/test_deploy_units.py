"""The shipped service definitions run the agent unprivileged, with a read-only root and confined paths."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_systemd_unit_is_unprivileged_with_a_read_only_root():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string((ROOT / "deploy" / "systemd" / "edgetl-agent.service").read_text())
    service = unit["Service"]
    assert service["User"] == "edgetl" and service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict" and service["ReadWritePaths"] == "/var/lib/edgetl"
    assert service["CapabilityBoundingSet"] == ""
    assert "--data-root /var/lib/edgetl" in service["ExecStart"]


def test_the_dockerfile_runs_as_a_numeric_non_root_user_and_documents_a_read_only_root():
    text = (ROOT / "deploy" / "jetson" / "Dockerfile").read_text()
    user = [line for line in text.splitlines() if line.startswith("USER ")]
    assert user == ["USER 10001:10001"]
    assert "--read-only" in text and "--cap-drop ALL" in text and "no-new-privileges" in text
    assert '"--data-root", "/var/lib/edgetl"' in text
