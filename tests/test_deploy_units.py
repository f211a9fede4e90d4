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
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == "/var/lib/edgetl /var/lib/edgetl-data"
    assert service["CapabilityBoundingSet"] == ""
    # the data root is not the state dir (a sink there could overwrite current.json or a model)
    assert "--state-dir /var/lib/edgetl " in service["ExecStart"]
    assert "--data-root /var/lib/edgetl-data" in service["ExecStart"]
    assert int(service["LimitNOFILE"]) >= 1024 + 256  # --max-connections plus the agent's own files


def test_the_dockerfile_runs_as_a_numeric_non_root_user_and_documents_a_read_only_root():
    text = (ROOT / "deploy" / "jetson" / "Dockerfile").read_text()
    user = [line for line in text.splitlines() if line.startswith("USER ")]
    assert user == ["USER 10001:10001"]
    assert "--read-only" in text and "--cap-drop ALL" in text and "no-new-privileges" in text
    assert '"--data-root", "/var/lib/edgetl-data"' in text
    assert "--ulimit nofile=8192:8192" in text and "ulimit -n 8192" in text
