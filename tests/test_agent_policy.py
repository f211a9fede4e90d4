"""Update policy (bundle_version), degraded start, confinement of pipeline paths, and the small fixes
of issue 13 item 12, over real HTTP."""

from __future__ import annotations

import json

import httpx
import pytest
from agent_support import ThreadAgent, bundles, install, resign, serving, upload, wait_install, write_token
from click.testing import CliRunner

from edgetl.device.limits import Limits


@pytest.fixture(scope="module")
def b(tmp_path_factory):
    return bundles(tmp_path_factory)


@pytest.fixture(scope="module")
def versions(b, tmp_path_factory):
    """v1 (no bundle_version: ordered by its created time), old (an older bundle_version), new."""
    root = tmp_path_factory.mktemp("versions")

    def at(ms, tag):
        return resign(b.v1, root / f"{tag}.edgetl", b.key,
                      edit_manifest=lambda m: m.update(bundle_version=ms, model_version=f"{m['model_version']}-{tag}"))

    return {"old": at(1_000, "old"), "new": at(2_000_000_000_000, "new")}


def test_an_older_bundle_is_refused_unless_the_downgrade_is_allowed(tmp_path, b, versions):
    with ThreadAgent(tmp_path / "state", [b.pub]) as agent, agent.client() as client:
        assert install(client, versions["new"])["status"] == "installed"
        status = install(client, versions["old"])
        assert status["status"] == "failed" and status["stage"] == "verify"
        assert "downgrade refused" in status["error"] and "--allow-downgrade" in status["error"]
        assert status["report"]["policy"]["downgrade"] is True
        assert install(client, b.v1)["status"] == "failed"  # no bundle_version: its created time is older
        response = client.put("/v1/model?allow_downgrade=true", content=versions["old"].read_bytes())
        assert wait_install(client, response.json()["install_id"])["status"] == "installed"
        assert serving(client).endswith("-old")


def test_deploy_allow_downgrade_flag(tmp_path, b, versions):
    from edgetl.cli import cli

    token = write_token(tmp_path / "token")
    with ThreadAgent(tmp_path / "state", [b.pub]) as agent, agent.client() as client:
        install(client, versions["new"])
        args = ["deploy", str(versions["old"]), "--device", agent.url, "--token-file", str(token)]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1 and "downgrade refused" in result.output
        result = CliRunner().invoke(cli, args + ["--allow-downgrade"])
        assert result.exit_code == 0, result.output
        assert serving(client).endswith("-old")


def test_redeploying_the_serving_bundle_is_a_no_op_that_keeps_the_rollback_target(tmp_path, b):
    with ThreadAgent(tmp_path / "state", [b.pub]) as agent, agent.client() as client:
        install(client, b.v1)
        install(client, b.v2)
        status = install(client, b.v2)
        assert status["status"] == "installed" and status["report"]["switch"]["unchanged"] is True
        info = client.get("/v1/info").json()
        assert (info["current"]["model_version"], info["previous"]["model_version"]) == (b.v2_version, b.v1_version)
        assert client.post("/v1/model/rollback").json() == {"from": b.v2_version, "to": b.v1_version}
        assert len(list((agent.agent.state.root / "models").iterdir())) == 2


def _break_current_model(state):
    pointer = json.loads((state / "current.json").read_text())
    for onnx in (state / "models" / pointer["current"]).rglob("*.onnx"):
        onnx.write_bytes(b"not an onnx model")


def test_an_agent_whose_only_model_does_not_load_starts_degraded_and_accepts_an_install(tmp_path, b):
    state = tmp_path / "state"
    with ThreadAgent(state, [b.pub]) as agent, agent.client() as client:
        install(client, b.v1)
    _break_current_model(state)
    (state / ".current.json.abc123.tmp").write_text("{}")  # a pointer write a kill interrupted
    with ThreadAgent(state, [b.pub]) as agent, agent.client() as client:
        health = httpx.get(agent.url + "/v1/health").json()
        assert health["status"] == "degraded" and "no model loads" in health["reason"]
        r = client.post("/v1/predict", content=b.jpeg(), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 503
        assert not list(state.glob(".*.tmp"))
        assert install(client, b.v2)["status"] == "installed"
        assert httpx.get(agent.url + "/v1/health").json() == {"status": "ok", "serving": True,
                                                              "model": b.v2_version}
        assert client.post("/v1/predict", content=b.jpeg(), headers={"Content-Type": "image/jpeg"}).status_code == 200


def test_pipeline_paths_are_confined_to_the_data_roots(tmp_path, b):
    state = tmp_path / "state"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    with ThreadAgent(state, [b.pub], limits=Limits()) as agent, agent.client() as client:
        install(client, b.v1)
        refused = [
            {"source": "/"},
            {"source": str(b.data / "val" / "good")},
            {"source": "../..", "sinks": []},
            {"source": "frames", "sinks": [{"name": "capture", "options": {"dir": str(outside)}}]},
            {"source": "frames", "sinks": [{"name": "jsonl", "options": {"path": "../outside/x.jsonl"}}]},
            # TLS files are paths too: a request cannot make the agent read a key it was not given
            {"source": "frames", "sinks": [{"name": "mqtt", "options": {"cert": str(outside / "precious.txt")}}]},
            {"source": "frames", "sinks": [{"name": "mqtt", "options": {"key": "../outside/precious.txt"}}]},
        ]
        for doc in refused:
            r = client.post("/v1/pipeline", json=doc)
            assert r.status_code == 400 and "outside the agent's data roots" in r.json()["error"], (doc, r.text)
        assert (outside / "precious.txt").read_text() == "keep me"
        frames = tmp_path / "state-data" / "frames"  # the default data root, beside the state dir
        frames.mkdir()
        for i in range(3):
            (frames / f"{i}.png").write_bytes(b.image("good", i).read_bytes())
        r = client.post("/v1/pipeline", json={"source": "frames",
                                              "sinks": [{"name": "jsonl", "options": {"path": "out.jsonl"}}]})
        assert r.status_code == 200, r.text
        assert r.json()["saved"]["source"] == str(frames.resolve())


def test_a_refused_pipeline_start_keeps_the_last_runs_status(tmp_path, b):
    with ThreadAgent(tmp_path / "state", [b.pub]) as agent, agent.client() as client:
        install(client, b.v1)
        r = client.post("/v1/pipeline", json={"source": str(b.data / "val" / "good")})
        assert r.status_code == 200
        agent.agent.pipeline.wait(20)
        before = client.get("/v1/pipeline").json()["status"]
        assert before["state"] == "finished" and before["frames"] > 0
        assert client.post("/v1/pipeline", json={"source": "nowhere-at-all"}).status_code == 400
        after = client.get("/v1/pipeline").json()["status"]
        assert after is not None and after["frames"] == before["frames"]


def test_member_paths_with_dot_segments_are_refused_by_the_schema(b):
    import re

    from edgetl.bundle import open_bundle
    from edgetl.errors import BundleError
    from edgetl.manifest import MEMBER_PATTERN, validate_manifest

    assert not re.match(MEMBER_PATTERN, "model/x/../../..")
    assert not re.match(MEMBER_PATTERN, "model/./x") and not re.match(MEMBER_PATTERN, "model//x")
    assert re.match(MEMBER_PATTERN, "model/sub/model.onnx") and re.match(MEMBER_PATTERN, "reference/a-b_c.json")
    with open_bundle(b.v1) as bundle:
        manifest = dict(bundle.manifest)
    manifest["files"] = dict(manifest["files"], **{"model/x/../../..": "0" * 64})
    with pytest.raises(BundleError, match="files"):
        validate_manifest(manifest)


def test_an_empty_reference_set_says_so(tmp_path, b):
    def empty(members):
        name = next(n for n in members if n.startswith("reference/") and n.endswith(".json"))
        doc = json.loads(members[name])
        doc["images"] = []
        members[name] = json.dumps(doc).encode()

    bad = resign(b.v2, tmp_path / "empty.edgetl", b.key, edit_members=empty)
    with ThreadAgent(tmp_path / "state", [b.pub]) as agent, agent.client() as client:
        status = install(client, bad)
        assert status["status"] == "failed" and "reference set is empty" in status["error"]
        assert "agreement" not in status["error"]


def test_upload_refusals_free_the_slot(tmp_path, b):
    with ThreadAgent(tmp_path / "state", [b.pub], max_bundle_mb=1) as agent, agent.client() as client:
        for _ in range(2):
            assert client.put("/v1/model", content=b"").status_code == 400
            assert client.put("/v1/model", content=b"\0" * (2 << 20)).status_code == 413
        assert upload(client, b.v1).status_code == 202


def test_the_installer_does_not_import_the_agent():
    import subprocess
    import sys

    code = "import sys, edgetl.device.install; print('edgetl.device.agent' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_function_in_the_device_package_is_over_60_lines():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "edgetl" / "device"
    long = [f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in root.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60]
    assert long == []
