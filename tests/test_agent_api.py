"""The agent over real HTTP on 127.0.0.1 with real signed bundles: install, predict, rollback, refusals."""

from __future__ import annotations

import json
import socket
import time
import zipfile

import pytest
from agent_support import (
    ThreadAgent,
    bundles,
    install,
    resign,
    serving,
    upload,
    wait_install,
    with_symlink_member,
)


@pytest.fixture(scope="module")
def b(tmp_path_factory):
    return bundles(tmp_path_factory)


@pytest.fixture()
def agent(tmp_path, b):
    with ThreadAgent(tmp_path / "state", [b.pub]) as running:
        yield running


@pytest.fixture(scope="module")
def agent_v1(tmp_path_factory, b):
    """One agent serving v1, shared by the refusal tests (each must leave it serving v1)."""
    with ThreadAgent(tmp_path_factory.mktemp("agent_v1") / "state", [b.pub], max_bundle_mb=2) as running:
        with running.client() as client:
            assert install(client, b.v1)["status"] == "installed"
        yield running


def test_deploy_then_predict_a_jpeg_end_to_end(agent, b):
    with agent.client() as client:
        status = install(client, b.v1)
        assert status["status"] == "installed" and status["progress"] == 1.0
        report = status["report"]
        assert report["signature"]["checked"] and len(report["signature"]["key_id"]) == 64
        assert report["reference"]["passed"] and report["reference"]["n"] > 0
        assert report["reference"]["max_abs_diff"] <= report["reference"]["tolerance"]["max_abs_diff"]
        assert report["compatibility"]["passed"] and report["switch"] == {"from": None, "to": b.v1_version,
                                                                           "previous_kept": False}
        assert [s["stage"] for s in status["stages"]] == ["verify", "stage", "compatibility", "load",
                                                          "reference", "switch"]
        response = client.post("/v1/predict", content=b.jpeg("defect"), headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 200
        doc = response.json()
        assert set(doc) >= {"label", "scores", "latency_ms", "model"} and doc["model"] == b.v1_version
        assert doc["label"] in ("defect", "good") and sum(doc["scores"].values()) == pytest.approx(1, abs=1e-4)
        info = client.get("/v1/info").json()
        assert info["current"]["model_version"] == b.v1_version and info["previous"] is None
        assert info["device"]["runtimes"]["onnx"]["available"] and info["device"]["arch"]
        metrics = client.get("/metrics").text
        assert 'edgetl_installs_total{result="installed"} 1.0' in metrics
        assert "edgetl_predictions_total{label=" in metrics and "edgetl_input_brightness_bucket" in metrics


def test_rollback_twice_returns_to_the_new_model(agent, b):
    with agent.client() as client:
        assert client.post("/v1/model/rollback").status_code == 409
        install(client, b.v1)
        assert client.post("/v1/model/rollback").json() == {"error": "no previous model to roll back to"}
        install(client, b.v2)
        assert serving(client) == b.v2_version
        assert client.post("/v1/model/rollback").json() == {"from": b.v2_version, "to": b.v1_version}
        assert serving(client) == b.v1_version
        predicted = client.post("/v1/predict", content=b.jpeg(), headers={"Content-Type": "image/jpeg"}).json()
        assert predicted["model"] == b.v1_version
        assert client.post("/v1/model/rollback").json() == {"from": b.v1_version, "to": b.v2_version}
        info = client.get("/v1/info").json()
        assert (info["current"]["model_version"], info["previous"]["model_version"]) == (b.v2_version, b.v1_version)
    assert 'edgetl_rollbacks_total 2.0' in agent.agent.metrics.render()[0].decode()


def _tampered(src, dst):
    """Same manifest and signature, one model byte changed."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith(".onnx"):
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            zout.writestr(item, data)
    return dst


def _path_escape(src, dst, key):
    from edgetl.bundle import manifest_bytes, open_bundle
    from edgetl.keys import load_private_key, sign

    with open_bundle(src) as bundle:
        manifest = json.loads(bundle.manifest_bytes)
        members = {n: bundle.read(n) for n in bundle.names if n not in ("manifest.json", "signature")}
    raw = manifest_bytes(manifest)
    with zipfile.ZipFile(dst, "w") as zf:
        zf.writestr("manifest.json", raw)
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr("../../escaped.txt", b"owned")
        zf.writestr("signature", json.dumps(sign(raw, load_private_key(key))))
    return dst


def _alter_reference(members):
    name = next(n for n in members if n.startswith("reference/") and n.endswith(".json"))
    doc = json.loads(members[name])
    for item in doc["images"]:
        item["output"] = [[1.0 - v for v in row] for row in item["output"]]  # flip every label
    members[name] = json.dumps(doc).encode()


REFUSALS = {
    "unsigned": (lambda b, d: resign(b.v2, d, None), "verify", "not signed"),
    "untrusted_key": (lambda b, d: resign(b.v2, d, b.other_key), "verify", "not trusted"),
    "tampered_member": (lambda b, d: _tampered(b.v2, d), "verify", "does not match its SHA-256"),
    "path_escape": (lambda b, d: _path_escape(b.v2, d, b.key), "verify", "unsafe path"),
    "symlink_member": (lambda b, d: with_symlink_member(b.v2, d, b.key), "stage", "symbolic link"),
    "truncated_file": (lambda b, d: d.write_bytes(b.v2.read_bytes()[: b.v2.stat().st_size // 2]) and d,
                       "verify", "not a zip"),
    "incompatible_runtime": (lambda b, d: resign(b.v2, d, b.key, edit_manifest=lambda m: m["target"].update(
        format="tensorrt")), "compatibility", "incompatible"),
    "reference_mismatch": (lambda b, d: resign(b.v2, d, b.key, edit_members=_alter_reference), "reference",
                           "reference check failed"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_bundle_gives_a_clear_error_and_the_old_model_keeps_serving(agent_v1, b, tmp_path, case):
    make, stage, message = REFUSALS[case]
    bad = make(b, tmp_path / f"{case}.edgetl")
    with agent_v1.client() as client:
        response = upload(client, bad)
        assert response.status_code == 202, response.text
        status = wait_install(client, response.json()["install_id"])
        assert status["status"] == "failed" and status["stage"] == stage, status
        assert message in status["error"] and "Traceback" not in status["error"]
        assert "\n" not in status["error"]
        assert serving(client) == b.v1_version
        predicted = client.post("/v1/predict", content=b.jpeg(), headers={"Content-Type": "image/jpeg"})
        assert predicted.status_code == 200 and predicted.json()["model"] == b.v1_version
    state = agent_v1.agent.state
    assert sorted(p.name for p in (state.root / "staging").iterdir()) == []
    assert list((state.root / "uploads").iterdir()) == []
    assert not (state.root.parent / "escaped.txt").exists() and not (state.root / "escaped.txt").exists()


def test_over_size_upload_is_refused_with_413_before_install(agent_v1, b, tmp_path):
    big = tmp_path / "big.edgetl"
    big.write_bytes(b"\0" * (3 * 1024 * 1024))
    with agent_v1.client() as client:
        response = upload(client, big)
        assert response.status_code == 413 and "too large" in response.json()["error"]

        def chunks():  # no Content-Length: the agent counts while streaming
            for _ in range(3):
                yield b"\0" * (1024 * 1024)

        response = client.put("/v1/model", content=chunks())
        assert response.status_code == 413
        assert serving(client) == b.v1_version
        assert install(client, b.v1)["status"] == "installed"  # the slot was freed


def test_a_connection_that_breaks_off_mid_upload_frees_the_slot(agent_v1, b):
    with socket.create_connection(("127.0.0.1", agent_v1.port)) as sock:
        sock.sendall(b"PUT /v1/model HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + agent_v1.token.encode()
                     + b"\r\nContent-Type: application/octet-stream\r\nContent-Length: 500000\r\n\r\n"
                     + b"PK" * 1000)
        time.sleep(0.3)
    time.sleep(0.3)
    with agent_v1.client() as client:
        assert install(client, b.v1)["status"] == "installed"
        assert list((agent_v1.agent.state.root / "uploads").iterdir()) == []


def test_predictions_keep_being_served_during_an_install(agent, b, monkeypatch):
    import edgetl.reference

    real = edgetl.reference.check_reference

    def slow_check(*args, **kwargs):
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(edgetl.reference, "check_reference", slow_check)
    with agent.client() as client:
        install(client, b.v1)
        install_id = upload(client, b.v2).json()["install_id"]
        assert upload(client, b.v2).status_code == 409  # installs are serialised
        models = []
        while client.get(f"/v1/model/install/{install_id}").json()["status"] == "running":
            r = client.post("/v1/predict", content=b.jpeg(), headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 200
            models.append(r.json()["model"])
        # the old model answers until the switch, then the new one, never back and forth
        switched_at = models.index(b.v2_version) if b.v2_version in models else len(models)
        assert switched_at >= 5 and set(models[:switched_at]) == {b.v1_version}
        assert set(models[switched_at:]) <= {b.v2_version}
        assert client.post("/v1/predict", content=b.jpeg(),
                           headers={"Content-Type": "image/jpeg"}).json()["model"] == b.v2_version


PROTECTED = [("GET", "/v1/info"), ("PUT", "/v1/model"), ("GET", "/v1/model/install/x"),
             ("POST", "/v1/model/rollback"), ("PATCH", "/v1/model/threshold"), ("POST", "/v1/predict"),
             ("GET", "/v1/pipeline"), ("POST", "/v1/pipeline")]


def test_the_token_guards_every_route_but_health_and_metrics(agent):
    import httpx

    with httpx.Client(base_url=agent.url) as anon:
        health = anon.get("/v1/health").json()  # nothing installed yet: up, and says what that means
        assert (health["status"], health["serving"]) == ("ok", False) and "no model installed yet" in health["reason"]
        assert "/v1/predict answers 503" in health["reason"] and "model" not in health
        assert anon.get("/metrics").status_code == 200
        for method, path in PROTECTED:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
                r = anon.request(method, path, headers=headers)
                assert r.status_code == 401, (method, path, headers)
                assert "token" in r.json()["error"]
    with agent.client() as client:
        assert client.get("/v1/info").status_code == 200


def test_threshold_is_journaled_and_reset_by_the_next_install(agent, b):
    with agent.client() as client:
        assert client.patch("/v1/model/threshold", json={"threshold": 0.3}).status_code == 503
        install(client, b.v1)
        assert client.patch("/v1/model/threshold", json={"threshold": 1.5}).status_code == 422
        before = client.post("/v1/predict", content=b.jpeg("good"), headers={"Content-Type": "image/jpeg"}).json()
        assert before["label"] == "good" and "threshold" not in before
        doc = client.patch("/v1/model/threshold", json={"threshold": 0.0}).json()
        assert doc == {"model": b.v1_version, "threshold": 0.0, "previous_threshold": None}
        predicted = client.post("/v1/predict", content=b.jpeg("good"), headers={"Content-Type": "image/jpeg"})
        assert predicted.json()["threshold"] == 0.0 and predicted.json()["label"] == "defect", predicted.json()
        journal = [json.loads(line) for line in agent.agent.state.journal_path.read_text().splitlines()]
        assert any(r["event"] == "threshold" and r["new"] == 0.0 for r in journal)
        install(client, b.v2)
        predicted = client.post("/v1/predict", content=b.jpeg("good"), headers={"Content-Type": "image/jpeg"})
        assert "threshold" not in predicted.json() and predicted.json()["label"] == "good"


def test_bad_requests_get_one_line_errors_without_traces(agent, b):
    with agent.client() as client:
        r = client.post("/v1/predict", content=b.jpeg(), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 503 and "no model installed" in r.json()["error"]
        install(client, b.v1)
        r = client.post("/v1/predict", content=b"garbage", headers={"Content-Type": "image/png"})
        assert r.status_code == 415 and "not a readable image" in r.json()["error"]
        r = client.post("/v1/predict", content=b.jpeg(), headers={"Content-Type": "image/png"})
        assert r.status_code == 415 and "the data is image/jpeg" in r.json()["error"]
        r = client.post("/v1/predict", content=b.jpeg(), headers={"Content-Type": "text/plain"})
        assert r.status_code == 415
        r = client.post("/v1/predict?heatmap=true", content=b.jpeg(), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 400 and "gives no anomaly map" in r.json()["error"]
        r = client.get("/v1/model/install/nope")
        assert r.status_code == 404 and r.json() == {"error": "no install 'nope' on this device"}
        r = client.post("/v1/pipeline", json={"source": "nowhere-at-all"})
        assert r.status_code == 400 and "no source plugin accepts" in r.json()["error"]
        for r in (client.put("/v1/model", content=b""),):
            assert r.status_code == 400 and "empty upload" in r.json()["error"]
        assert all("Traceback" not in x for x in (r.text,))


def test_pipeline_replays_a_folder_into_jsonl_through_the_api_and_is_persisted(agent, b, tmp_path):
    out = tmp_path / "results.jsonl"
    with agent.client() as client:
        install(client, b.v1)
        r = client.post("/v1/pipeline", json={"source": str(b.data / "val" / "defect"),
                                              "sinks": [{"name": "jsonl", "options": {"path": str(out)}}]})
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 20
        while client.get("/v1/pipeline").json()["status"]["state"] != "finished":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        status = client.get("/v1/pipeline").json()
        n = len(list((b.data / "val" / "defect").glob("*.png")))
        assert status["status"]["frames"] == n and status["status"]["dropped"] == 0 and not status["running"]
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert len(lines) == n and all(x["model"] == b.v1_version for x in lines)
        assert "pipeline" in client.get("/metrics").text
        saved = json.loads(agent.agent.state.pipeline_path.read_text())
        assert saved["running"] is False and saved["config"]["source"].endswith("defect")
