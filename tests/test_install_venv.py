"""scripts/install_venv.py hands pip's package sources to uv: the indexes make venv installs from."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("install_venv", ROOT / "scripts" / "install_venv.py")
install_venv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(install_venv)

PIP_CONFIG_LIST = """global.cert='/etc/ssl/certs/ca-certificates.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/a/simple file:///opt/b/simple'
global.find-links='/opt/wheels'
global.index-url='https://files.example/simple'
:env:.find-links='/srv/wheels /srv/more'
:env:.default-timeout='180'
"""


def test_pip_sources_become_uv_options_with_the_variables_winning():
    config = install_venv.parse_pip_config(PIP_CONFIG_LIST)
    assert config["extra-index-url"] == ["file:///opt/a/simple", "file:///opt/b/simple"]
    assert config["find-links"] == ["/srv/wheels", "/srv/more"]  # PIP_FIND_LINKS over the file
    cmd = install_venv.uv_command("/x/.venv/bin/python", "all", config)
    assert cmd[:3] == ["/x/.venv/bin/uv", "pip", "install"] and cmd[-2:] == ["--editable", f"{ROOT}[all]"]
    pairs = list(zip(cmd, cmd[1:], strict=False))
    for pair in [("--index-url", "https://files.example/simple"), ("--extra-index-url", "file:///opt/a/simple"),
                 ("--extra-index-url", "file:///opt/b/simple"), ("--find-links", "/srv/wheels"),
                 ("--find-links", "/srv/more"), ("--constraints", "/etc/xdg/pip/constraints.txt"),
                 ("--constraints", str(ROOT / "constraints.txt")), ("--python", "/x/.venv/bin/python")]:
        assert pair in pairs, pair
    assert ("--find-links", "/opt/wheels") not in pairs and "--no-index" not in cmd
    assert "--no-index" in install_venv.uv_command("p", "all", install_venv.parse_pip_config(":env:.no-index='1'\n"))


def test_no_pip_configuration_means_uv_defaults():
    cmd = install_venv.uv_command("/v/bin/python", "agent", install_venv.parse_pip_config(""))
    assert not {"--index-url", "--extra-index-url", "--find-links", "--no-index"} & set(cmd)
    assert cmd[-1] == f"{ROOT}[agent]"
