"""``edgetl deploy`` and ``edgetl device`` against real agents on 127.0.0.1 (one thread each)."""

from __future__ import annotations

import json
import shutil
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml
from agent_support import ThreadAgent, bundles, install, serving, write_token
from click.testing import CliRunner
from net_helpers import free_port

from edgetl.cli import cli


@pytest.fixture(scope="module")
def b(tmp_path_factory):
    return bundles(tmp_path_factory)


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def _v1_state(b) -> Path:
    """A state dir serving v1, installed once per worker: a preinstalled device starts on a copy of it."""
    seed = Path(b.root) / "deploy-fleet-v1"
    if not (seed / "current.json").exists():
        with ThreadAgent(seed, [b.pub]) as agent, agent.client() as client:
            assert install(client, b.v1)["status"] == "installed"
    return seed


def start_fleet(stack, root, b, n, preinstalled=True):
    agents = []
    for i in range(n):
        if preinstalled:
            shutil.copytree(_v1_state(b), root / f"dev{i}")
        agent = stack.enter_context(ThreadAgent(root / f"dev{i}", [b.pub], token=f"token-{i}"))
        write_token(root / f"dev{i}.token", f"token-{i}")
        if preinstalled:
            with agent.client() as client:
                assert serving(client) == b.v1_version
        agents.append(agent)
    return agents


def fleet_file(root, agents, order=None):
    """The fleet file; ``order`` lists agent indices (their token is dev<index>.token), default all in order."""
    order = list(range(len(agents))) if order is None else order
    devices = [{"name": f"cam{i}", "url": agents[i].url, "token_file": f"dev{i}.token", "labels": {"line": "1"}}
               for i in order]
    path = root / "fleet.yaml"
    path.write_text(yaml.safe_dump({"devices": devices}))
    return path


def test_deploy_to_one_device_prints_what_it_verified(tmp_path, b):
    with ExitStack() as stack:
        (agent,) = start_fleet(stack, tmp_path, b, 1)
        code, out = run("deploy", b.v2, "--device", agent.url, "--token-file", tmp_path / "dev0.token")
        assert code == 0, out
        assert "signature   ok, key" in out and "reference   passed: n=" in out
        assert f"switch      {b.v1_version} -> {b.v2_version}" in out and "compatible  onnx fp32" in out
        with agent.client() as client:
            assert serving(client) == b.v2_version
        code, out = run("device", "info", "--device", agent.url, "--token-file", tmp_path / "dev0.token", "--json")
        assert code == 0 and json.loads(out)["previous"]["model_version"] == b.v1_version
        code, out = run("device", "rollback", "--device", agent.url, "--token-file", tmp_path / "dev0.token")
        assert code == 0 and f"{b.v2_version} -> {b.v1_version}" in out
        code, out = run("device", "info", "--device", agent.url, "--token-file", tmp_path / "dev0.token")
        assert code == 0 and f"current   {b.v1_version}" in out


def test_deploy_exits_non_zero_when_the_device_refuses(tmp_path, b):
    from edgetl.keys import load_public_key

    with ExitStack() as stack:
        (agent,) = start_fleet(stack, tmp_path, b, 1)
        write_token(tmp_path / "wrong.token", "nope")
        code, out = run("deploy", b.v2, "--device", agent.url, "--token-file", tmp_path / "wrong.token")
        assert code == 1 and "does not accept this token: it is not the agent the token belongs to" in out
        agent.agent.trusted_keys = [load_public_key(b.other_pub)]  # a key rotation gone wrong
        code, out = run("deploy", b.v2, "--device", agent.url, "--token-file", tmp_path / "dev0.token")
        assert code == 1 and "not trusted" in out and "not ended on the new model" in out
        code, out = run("deploy", b.v2, "--device", f"http://127.0.0.1:{free_port()}", "--token-file",
                        tmp_path / "dev0.token")
        assert code == 1 and "cannot connect" in out
        with agent.client() as client:
            assert serving(client) == b.v1_version


def test_fleet_rollout_canary_then_parallel_all_on_the_new_model(tmp_path, b):
    with ExitStack() as stack:
        agents = start_fleet(stack, tmp_path, b, 5)
        code, out = run("deploy", b.v2, "--fleet", fleet_file(tmp_path, agents), "--parallel", 3, "--json")
        assert code == 0, out
        doc = json.loads(out[out.index("{"):out.rindex("}") + 1])
        assert doc["ok"] and [d["result"] for d in doc["devices"]] == ["installed"] * 5
        assert all(d["before"] == b.v1_version and d["after"] == b.v2_version for d in doc["devices"])
        for agent in agents:
            with agent.client() as client:
                assert serving(client) == b.v2_version


def test_fleet_halts_at_a_failure_and_rolls_back_the_devices_it_changed(tmp_path, b):
    from edgetl.keys import load_public_key

    with ExitStack() as stack:
        agents = start_fleet(stack, tmp_path, b, 5)
        fresh = stack.enter_context(ThreadAgent(tmp_path / "dev5", [b.pub], token="token-5"))
        write_token(tmp_path / "dev5.token", "token-5")
        agents.append(fresh)  # no model before: keeps the new one, and the summary says so
        agents[2].agent.trusted_keys = [load_public_key(b.other_pub)]  # its install will be refused
        path = fleet_file(tmp_path, agents, order=[0, 5, 1, 2, 3, 4])
        # canary cam0, then one at a time: cam5 (fresh), cam1, cam2 (refuses), cam3, cam4
        code, out = run("deploy", b.v2, "--fleet", path, "--parallel", 1, "--json")
        assert code == 1
        doc = json.loads(out[out.index("{"):out.rindex("}") + 1])
        assert [d["name"] for d in doc["devices"]] == ["cam0", "cam5", "cam1", "cam2", "cam3", "cam4"]
        assert [d["result"] for d in doc["devices"]] == ["rolled_back", "kept", "rolled_back", "failed",
                                                         "skipped", "skipped"]
        assert "not trusted" in doc["devices"][3]["error"]
        for agent, version in zip(agents, [b.v1_version] * 5 + [b.v2_version], strict=True):
            with agent.client() as client:
                assert serving(client) == version


def test_fleet_no_rollback_keeps_the_changed_devices(tmp_path, b):
    from edgetl.keys import load_public_key

    with ExitStack() as stack:
        agents = start_fleet(stack, tmp_path, b, 3)
        agents[1].agent.trusted_keys = [load_public_key(b.other_pub)]
        code, out = run("deploy", b.v2, "--fleet", fleet_file(tmp_path, agents), "--parallel", 1, "--no-rollback")
        assert code == 1 and "cam1 (failed)" in out and "cam2 (skipped)" in out
        with agents[0].client() as client:
            assert serving(client) == b.v2_version


def test_fleet_dry_run_checks_reach_token_and_compatibility_without_installing(tmp_path, b):
    with ExitStack() as stack:
        agents = start_fleet(stack, tmp_path, b, 2)
        write_token(tmp_path / "dev2.token", "wrong")
        write_token(tmp_path / "dev3.token", "whatever")
        fleet = {"devices": [
            {"name": "ok0", "url": agents[0].url, "token_file": "dev0.token"},
            {"name": "ok1", "url": agents[1].url, "token_env": "EDGETL_TEST_CAM1_TOKEN"},
            {"name": "badtoken", "url": agents[0].url, "token_file": "dev2.token"},
            {"name": "down", "url": f"http://127.0.0.1:{free_port()}", "token_file": "dev3.token"}]}
        path = tmp_path / "fleet.yaml"
        path.write_text(yaml.safe_dump(fleet))
        runner = CliRunner(env={"EDGETL_TEST_CAM1_TOKEN": "token-1"})
        result = runner.invoke(cli, ["deploy", str(b.v1), "--fleet", str(path), "--dry-run", "--json"])
        assert result.exit_code == 1
        out = result.output
        doc = json.loads(out[out.index("{"):out.rindex("}") + 1])
        assert [d["result"] for d in doc["devices"]] == ["ok", "ok", "unauthorized", "unreachable"]
        assert "already serving this model_version" in doc["devices"][0]["warnings"]
        for agent in agents:
            with agent.client() as client:
                assert client.get("/v1/info").json()["previous"] is None  # nothing was installed


def test_deploy_usage_errors_are_one_line(tmp_path, b):
    code, out = run("deploy", b.v1)
    assert code == 2 and "either --device" in out
    code, out = run("deploy", tmp_path / "missing.edgetl", "--device", "http://127.0.0.1:1",
                    "--token-file", write_token(tmp_path / "t"))
    assert code == 1 and "missing.edgetl" in out and "Traceback" not in out
    (tmp_path / "fleet.yaml").write_text("devices: []\n")
    code, out = run("deploy", b.v1, "--fleet", tmp_path / "fleet.yaml")
    assert code == 1 and "fleet.yaml" in out
