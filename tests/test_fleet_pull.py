"""Fleets that pull: `edgetl push` to a real registry (CNCF distribution, htpasswd auth; at the end
Bearer-token auth with a token service started here), agents in pull mode, status over a real
mosquitto (password auth), `edgetl fleet promote/status`, and the faults: each leaves the old model
serving and nothing half-installed."""

from __future__ import annotations

import json
import threading
import time
from contextlib import ExitStack

import pytest
from agent_support import ProcessAgent, ThreadAgent, bundles, install, resign, serving, write_token
from click.testing import CliRunner
from net_helpers import free_port
from registry_support import Mosquitto, RegistryServer, SlowProxy, TokenServer, docker_config

from edgetl.cli import cli
from edgetl.device.oci import OciRef, Registry, RegistryError
from edgetl.device.pull import PullConfig, Puller, start_pull


@pytest.fixture(scope="module")
def b(tmp_path_factory):
    return bundles(tmp_path_factory)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with RegistryServer(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with Mosquitto(tmp_path_factory.mktemp("mosquitto")) as server:
        yield server


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def push(registry, bundle, repo, tag):
    code, out = run("push", bundle, registry.url(repo, tag), "--insecure", "--registry-auth", registry.auth_file,
                    "--json")
    assert code == 0, out
    return json.loads(out)["digest"]


def puller(agent, registry, repo, tag, host=None, auth=None, **config):
    ref = OciRef.parse(f"oci://{host or registry.host}/{repo}:{tag}")
    return Puller(agent.agent, PullConfig(ref=ref, insecure=True, auth_file=str(auth or registry.auth_file),
                                          timeout=5, **config))


def clean(agent) -> None:
    """Nothing half-installed: no staging dir, no upload, only the pointer's models."""
    root = agent.agent.state.root
    pointer = agent.agent.state.pointer()
    assert not list((root / "staging").iterdir())
    assert not list((root / "uploads").iterdir())
    assert {p.name for p in (root / "models").iterdir()} == {i for i in pointer.values() if i}


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_push_three_agents_converge_and_promote_canary_to_stable(tmp_path, b, registry, broker):
    repo, interval = "line1/cam", 1.5
    v1 = push(registry, b.v1, repo, "canary")
    assert push(registry, b.v1, repo, "stable") == v1
    status = {"broker": f"127.0.0.1:{broker.port}", "auth_file": str(broker.auth_file)}
    with ExitStack() as stack:
        agents, pullers = [], []
        for i, channel in enumerate(["canary", "canary", "stable"]):
            agent = stack.enter_context(ThreadAgent(tmp_path / f"dev{i}", [b.pub]))
            config = PullConfig(ref=OciRef.parse(registry.url(repo, channel)), interval=interval, insecure=True,
                                auth_file=str(registry.auth_file), timeout=5)
            p = start_pull(agent.agent, config, dict(status, device_id=f"cam{i}"))
            stack.callback(p.stop)
            agents.append(agent)
            pullers.append(p)
        clients = [stack.enter_context(a.client()) for a in agents]
        wait_for(lambda: all(serving(c) == b.v1_version for c in clients), 30, "v1 everywhere")

        v2 = push(registry, b.v2, repo, "canary")
        assert push(registry, b.v2, repo, "stable") == v2
        pushed = time.monotonic()
        done = wait_for(lambda: all(serving(c) == b.v2_version for c in clients), 30, "v2 everywhere")
        # every device polls within one interval (+10 % jitter); one install takes ~0.5 s here
        assert done - pushed <= 2 * interval, f"the fleet took {done - pushed:.1f} s"
        for p in pullers:  # one download per bundle
            assert p.counters["downloads"] == 2
            assert p.counters["downloaded_bytes"] == b.v1.stat().st_size + b.v2.stat().st_size

        v3_bundle = resign(b.v1, tmp_path / "v3.edgetl", b.key, edit_manifest=lambda m: m.update(
            model_version="v3", bundle_version=m["bundle_version"] + 1))
        v3 = push(registry, v3_bundle, repo, "canary")  # the release to promote
        wait_for(lambda: all(serving(c) == "v3" for c in clients[:2]), 30, "v3 on canary")
        assert serving(clients[2]) == b.v2_version  # stable did not move
        info = clients[0].get("/v1/info").json()["pull"]
        assert info["state"] == "ok" and info["serving_digest"] == v3 and info["channel"] == "canary"
        assert 'edgetl_pull_state{edgetl_pull_state="ok"} 1.0' in clients[0].get("/metrics").text

        mqtt = ["--status-mqtt", f"127.0.0.1:{broker.port}", "--status-mqtt-auth", broker.auth_file]
        code, out = run("fleet", "promote", registry.url(repo), "--from", "canary", "--to", "line9", "--require", 3,
                        "--timeout", "1s", *mqtt, "--insecure", "--registry-auth", registry.auth_file)
        assert code == 1 and "line9 not moved: 2 of 3" in out
        code, out = run("fleet", "promote", registry.url(repo), "--from", "canary", "--to", "stable", "--require", 2,
                        "--soak", "1s", "--timeout", "20s", *mqtt, "--insecure", "--registry-auth",
                        registry.auth_file)
        assert code == 0 and f"stable -> {v3}" in out, out
        wait_for(lambda: serving(clients[2]) == "v3", 3 * interval + 5, "v3 on stable")

        code, out = run("fleet", "status", *mqtt, "--json")
        devices = {d["device_id"]: d for d in json.loads(out)["devices"]}
        assert code == 0 and {"cam0", "cam1", "cam2"} <= set(devices)
        def fleet():
            return {d["device_id"]: d for d in json.loads(run("fleet", "status", *mqtt, "--json")[1])["devices"]}

        wait_for(lambda: fleet()["cam2"]["serving_digest"] == v3, 3 * interval + 5, "cam2's status")
        assert devices["cam0"]["channel"] == "canary" and devices["cam0"]["online"] is True
        assert devices["cam0"]["serving"] == "v3" and devices["cam0"]["counters"]["downloads"] == 3
        # polls since then found the tag unchanged and downloaded nothing
        assert pullers[0].counters["unchanged"] >= 1 and pullers[0].counters["downloads"] == 3

        # the last will: cam1 drops off the network without a goodbye -> the broker says offline
        publisher = pullers[1].publisher
        publisher.client.loop_stop()
        publisher.client.socket().close()
        wait_for(lambda: not fleet()["cam1"]["online"], 10, "cam1 offline")
        pullers[1].publisher = None
    for a in agents:
        clean(a)


def test_schema_of_the_status_message_matches_what_agents_publish(tmp_path, b, registry, broker):
    import jsonschema
    import paho.mqtt.client as mqtt

    schema = json.loads((__import__("pathlib").Path(__file__).parents[1] / "docs" / "schemas" /
                         "device-status.schema.json").read_text())
    push(registry, b.v1, "line2/cam", "canary")
    got: list[dict] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.username_pw_set(*broker.auth_file.read_text().splitlines()[:2])
    sub.on_connect = lambda c, u, f, rc, p=None: c.subscribe("edgetl/devices/schema-cam/status", qos=1)
    sub.on_message = lambda c, u, m: got.append(json.loads(m.payload))
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    try:
        with ThreadAgent(tmp_path / "dev", [b.pub]) as agent:
            # the first poll comes within interval x jitter (0.5 s here, not the 6 s of a 60 s interval)
            config = PullConfig(ref=OciRef.parse(registry.url("line2/cam", "canary")), interval=5, insecure=True,
                                auth_file=str(registry.auth_file))
            p = start_pull(agent.agent, config, {"broker": f"127.0.0.1:{broker.port}", "device_id": "schema-cam",
                                                 "auth_file": str(broker.auth_file)})
            wait_for(lambda: any(d.get("state") == "ok" for d in got), 20, "an ok status")
            p.stop()
        wait_for(lambda: got and got[-1]["online"] is False, 5, "offline on a clean stop")
    finally:
        sub.loop_stop()
        sub.disconnect()
    for doc in got:
        jsonschema.validate(doc, schema)


@pytest.fixture
def on_v1(tmp_path, b):
    with ThreadAgent(tmp_path / "dev", [b.pub]) as agent, agent.client() as client:
        assert install(client, b.v1)["status"] == "installed"
        yield agent


def test_faults_keep_the_old_model_serving(tmp_path, b, registry, on_v1, monkeypatch):
    agent = on_v1
    with agent.client() as client:
        # registry down at start
        down = f"127.0.0.1:{free_port()}"
        p = puller(agent, registry, "f/cam", "canary", host=down, auth=docker_config(tmp_path / "down.json", down))
        assert p.poll_once() == "error" and "cannot connect" in p.last_error
        # wrong credentials
        wrong = docker_config(tmp_path / "wrong.json", registry.host, password="not-it")
        p = puller(agent, registry, "f/cam", "canary", auth=wrong)
        assert p.poll_once() == "error" and "refused the credentials" in p.last_error
        # an artifact signed by a key the device does not trust
        push(registry, resign(b.v1, tmp_path / "stranger.edgetl", b.other_key,
                              edit_manifest=lambda m: m.update(model_version="stranger")), "f/cam", "canary")
        p = puller(agent, registry, "f/cam", "canary")
        assert p.poll_once() == "refused" and "not trusted" in p.last_error
        assert p.poll_once() == "unchanged" and p.counters["downloads"] == 1  # not downloaded again
        # a blob whose bytes do not match its digest
        bad = resign(b.v1, tmp_path / "bad.edgetl", b.key, edit_manifest=lambda m: m.update(model_version="bad"))
        push(registry, bad, "f/cam", "bad")
        blob = registry.blob_path(Registry(OciRef.parse(registry.url("f/cam", "bad")), insecure=True,
                                           auth_file=registry.auth_file).manifest()[2]["layers"][0]["digest"])
        data = bytearray(blob.read_bytes())
        data[100] ^= 0xFF
        blob.write_bytes(bytes(data))
        p = puller(agent, registry, "f/cam", "bad")
        assert p.poll_once() == "refused" and "hashes to" in p.last_error
        assert not list(p.folder.glob("*.part"))
        # the tag deleted
        digest = push(registry, b.v2, "f/cam", "gone")
        p = puller(agent, registry, "f/cam", "gone")
        Registry(OciRef.parse(registry.url("f/cam", "gone")), insecure=True,
                 auth_file=registry.auth_file).delete_manifest(digest)
        assert p.poll_once() == "error" and "not found" in p.last_error
        # a bundle over the device's cap: refused from the manifest's declared size, nothing downloaded
        agent.agent.limits = __import__("dataclasses").replace(agent.agent.limits, bundle_bytes=100_000)
        push(registry, b.v2, "f/cam", "big")
        p = puller(agent, registry, "f/cam", "big")
        sent = p.registry.requests
        assert p.poll_once() == "refused" and "over this device's cap" in p.last_error
        assert p.counters["downloaded_bytes"] == 0 and p.registry.requests - sent == 2 + 1  # auth, HEAD, manifest
        assert serving(client) == b.v1_version
    clean(agent)


def test_disk_full_mid_pull_then_resume_and_downgrade_policy(tmp_path, b, registry, on_v1, monkeypatch):
    agent = on_v1
    older = resign(b.v1, tmp_path / "older.edgetl", b.key,
                   edit_manifest=lambda m: m.update(model_version="older", bundle_version=m["bundle_version"] - 1000))
    old = push(registry, older, "g/cam", "old")
    push(registry, b.v2, "g/cam", "canary")
    p = puller(agent, registry, "g/cam", "canary")
    monkeypatch.setenv("EDGETL_TEST_DISK_FULL", "pull:200000")
    assert p.poll_once() == "error" and "No space left" in p.last_error
    with agent.client() as client:
        assert serving(client) == b.v1_version
    clean(agent)
    monkeypatch.delenv("EDGETL_TEST_DISK_FULL")
    assert p.poll_once() == "installed" and p.counters["resumed"] == 1
    assert p.counters["downloaded_bytes"] < b.v2.stat().st_size  # only the rest was downloaded
    # the channel's tag moved back to the older bundle: refused unless the downgrade policy allows it
    registry_client = Registry(OciRef.parse(registry.url("g/cam", "old")), insecure=True,
                               auth_file=registry.auth_file)
    registry_client.put_manifest("canary", registry_client.manifest("old")[1])
    assert p.poll_once() == "refused" and "downgrade refused" in p.last_error
    with agent.client() as client:
        assert serving(client) == b.v2_version
    allowing = puller(agent, registry, "g/cam", "canary", allow_downgrade=True)
    allowing.refused.clear()
    assert allowing.poll_once() == "installed" and allowing.serving_digest() == old
    with agent.client() as client:
        assert serving(client) == "older"
    clean(agent)


def test_registry_down_mid_download_resumes(tmp_path, b, registry, on_v1):
    agent = on_v1
    push(registry, b.v2, "h/cam", "canary")
    proxy = SlowProxy(registry.port, rate=200 * 1024)
    try:
        p = puller(agent, registry, "h/cam", "canary", host=proxy.host,
                   auth=docker_config(tmp_path / "proxy.json", proxy.host))
        outcome: list[str] = []
        worker = threading.Thread(target=lambda: outcome.append(p.poll_once()))
        worker.start()
        wait_for(lambda: any(f.stat().st_size > 50_000 for f in p.folder.glob("*.part")), 20, "a partial download")
        registry.stop()
        proxy.cut()
        worker.join(20)
        assert outcome == ["error"] and "broke off" in p.last_error
        with agent.client() as client:
            assert serving(client) == b.v1_version
        clean(agent)
        assert p.poll_once() == "error"  # still down
        registry.start()
        assert p.poll_once() == "installed" and p.counters["resumed"] == 1
    finally:
        proxy.close()
        if registry.proc is None:
            registry.start()
    with agent.client() as client:
        assert serving(client) == b.v2_version
    clean(agent)


def test_kill_9_mid_pull_then_restart_resumes(tmp_path, b, registry):
    """The one pull test with real processes: surviving a real kill -9 mid-download is the point."""
    push(registry, b.v1, "k/cam", "canary")
    state = tmp_path / "state"
    with ThreadAgent(state, [b.pub]) as seeding:  # v1 pulled straight from the registry, in this process
        assert puller(seeding, registry, "k/cam", "canary").poll_once() == "installed"
    proxy = SlowProxy(registry.port, rate=150 * 1024)
    token = write_token(tmp_path / "token")
    auth = docker_config(tmp_path / "proxy.json", proxy.host)
    args = ["--pull", f"oci://{proxy.host}/k/cam:canary", "--pull-interval", "0.5s", "--insecure",
            "--registry-auth", str(auth)]
    agent = ProcessAgent(state, [b.pub], token, extra_args=args).wait_ready()
    try:
        with agent.client() as client:
            assert serving(client) == b.v1_version
            wait_for(lambda: client.get("/v1/info").json()["pull"]["state"] == "ok", 30, "a poll: v1 is up to date")
        push(registry, b.v2, "k/cam", "canary")
        wait_for(lambda: any(f.stat().st_size > 50_000 for f in (state / "pull").glob("*.part")), 30, "partial")
        agent.kill()
        proxy.cut()
        proxy.hold()  # the resumed download waits until the test has seen what serves after the restart
        proxy.rate = 0  # then the rest at full speed: resuming, not the proxy's pace, is what is tested
        agent = ProcessAgent(state, [b.pub], token, extra_args=args).wait_ready()
        with agent.client() as client:
            assert serving(client) == b.v1_version  # the old model serves at once after the restart
            proxy.release()
            wait_for(lambda: client.get("/v1/info").json()["pull"]["state"] == "ok"
                     and serving(client) == b.v2_version, 30, "v2 after the restart")
            pull = client.get("/v1/info").json()["pull"]
        assert pull["counters"]["resumed"] == 1 and pull["state"] == "ok"
        assert pull["counters"]["downloaded_bytes"] < b.v2.stat().st_size
        assert not agent.blocked_imports()
    finally:
        agent.stop()
        proxy.close()
    assert not list((state / "staging").iterdir()) and not list((state / "uploads").iterdir())


class _Garbage:
    """An HTTP server on loopback that answers like a broken registry: ``mode`` picks how."""

    def __init__(self, mode: str):
        import hashlib
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        body = b"<html>proxy error</html>" if mode == "html" else json.dumps(
            {"schemaVersion": 2, "config": {"mediaType": "application/vnd.oci.image.config.v1+json"},
             "layers": []}).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, send_body):
                if mode == "slow":
                    time.sleep(3)
                self.send_response(200)
                self.send_header("Docker-Content-Digest", digest)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

            def do_HEAD(self):
                self._answer(False)

            def do_GET(self):
                self._answer(True)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("mode, error", [("html", "not JSON"), ("image", "not an edgetl bundle"),
                                         ("slow", "no answer within 1 s")])
def test_a_registry_answering_garbage_or_too_slowly_never_stops_serving(tmp_path, b, registry, on_v1, mode, error):
    fake = _Garbage(mode)
    try:
        p = puller(on_v1, registry, "x/cam", "canary", host=fake.host,
                   auth=docker_config(tmp_path / "fake.json", fake.host))
        p.config.timeout = 1
        p.registry = Registry(p.config.ref, insecure=True, auth_file=p.config.auth_file, timeout=1)
        assert p.poll_once() == "error" and error in p.last_error
        with on_v1.client() as client:
            assert serving(client) == b.v1_version and client.get("/v1/health").json()["status"] == "ok"
        clean(on_v1)
    finally:
        fake.close()


def test_tls_registry_needs_its_ca_and_plain_http_needs_insecure(tmp_path, b, registry, monkeypatch):
    from agent_support import self_signed_cert

    cert, key = self_signed_cert(tmp_path)
    with RegistryServer(tmp_path / "tls-registry", tls=(cert, key)) as tls:
        target = tls.url("t/cam", "canary")
        code, out = run("push", b.v1, target, "--registry-auth", tls.auth_file)
        assert code != 0 and "TLS failed" in out and "--registry-ca" in out
        # credentials from the standard docker config ($DOCKER_CONFIG/config.json), TLS from the CA file
        (tmp_path / "docker").mkdir()
        docker_config(tmp_path / "docker" / "config.json", tls.host)
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
        code, out = run("push", b.v1, target, "--registry-ca", cert, "--json")
        assert code == 0, out
        digest = json.loads(out)["digest"]
        assert Registry(OciRef.parse(target), ca=cert).head_digest() == digest
    # a plain-HTTP registry is reached only with --insecure
    code, out = run("push", b.v1, registry.url("t/cam", "canary"), "--registry-auth", registry.auth_file)
    assert code != 0 and "--insecure" in out


def test_pull_options_are_checked_before_the_agent_starts(tmp_path, b):
    token = write_token(tmp_path / "token")
    base = ["agent", "serve", "--state-dir", tmp_path / "s", "--token-file", token, "--trust", b.pub]
    code, out = run(*base, "--status-mqtt", "127.0.0.1:1883")
    assert code == 2 and "go with --pull" in out
    code, out = run(*base, "--pull", "oci://127.0.0.1:5000/line1/cam")
    assert code != 0 and "a tag is needed (the channel)" in out
    code, out = run(*base, "--pull", "oci://127.0.0.1:5000/line1/cam:stable", "--pull-interval", "soon")
    assert code != 0 and "expected a duration" in out


def test_bundle_push_in_chunks_is_pulled_byte_for_byte(tmp_path, b, registry):
    import edgetl
    from edgetl.device.oci import bundle_layer, push_bundle

    done = edgetl.Bundle(b.v1).push(registry.url("c/cam", "whole"), insecure=True, auth_file=registry.auth_file)
    chunked = push_bundle(b.v1, registry.url("c/other", "chunked"), insecure=True, auth_file=registry.auth_file,
                          chunk=100_000)  # another repository (no blob to reuse): 508 KB in 6 PATCHes
    assert chunked["digest"] == done["digest"] and done["annotations"]["io.edgetl.bundle.digest"] == done["bundle_digest"]
    client = Registry(OciRef.parse(registry.url("c/other", "chunked")), insecure=True, auth_file=registry.auth_file)
    layer = bundle_layer(client.manifest()[2], client.ref)
    client.download_blob(layer, tmp_path / "got.part", cap=1 << 30)
    assert (tmp_path / "got.part").read_bytes() == b.v1.read_bytes()


# -- a registry with Bearer-token auth (the Docker/OCI token flow of Harbor, GHCR, Docker Hub) -----------------
@pytest.fixture(scope="module")
def token_registry(tmp_path_factory):
    """CNCF distribution configured for token auth, and the token service it trusts, started here."""
    root = tmp_path_factory.mktemp("token-registry")
    with TokenServer(root) as tokens, RegistryServer(root / "registry", token=tokens) as registry:
        yield registry, tokens


def test_token_registry_push_and_pull_through_the_token_flow(token_registry, b, tmp_path):
    registry, tokens = token_registry
    target = registry.url("line7/cam", "canary")
    code, out = run("push", b.v1, target, "--insecure", "--registry-auth", registry.auth_file, "--json")
    assert code == 0, out
    digest = json.loads(out)["digest"]
    assert any(s.startswith("repository:line7/cam:") and "push" in s for s in tokens.scopes), tokens.scopes
    # the device side: the tag's digest, then a pull that installs and serves it
    ref = OciRef.parse(target)
    assert Registry(ref, insecure=True, auth_file=registry.auth_file).head_digest() == digest
    with ThreadAgent(tmp_path / "dev", [b.pub]) as agent:
        puller = Puller(agent.agent, PullConfig(ref=ref, insecure=True, auth_file=str(registry.auth_file),
                                                timeout=5))
        assert puller.poll_once() == "installed", puller.last_error
        with agent.client() as client:
            assert serving(client) == b.v1_version
        assert puller.poll_once() == "unchanged"
    assert "repository:line7/cam:pull" in tokens.scopes


def test_token_registry_refuses_wrong_credentials_in_one_line(token_registry, b, tmp_path):
    registry, tokens = token_registry
    wrong = docker_config(tmp_path / "wrong.json", registry.host, password="not-the-password")
    before = tokens.refused
    with pytest.raises(RegistryError, match=r"refused the credentials \(HEAD manifest canary: 401\)"):
        Registry(OciRef.parse(registry.url("line7/cam", "canary")), insecure=True, auth_file=wrong).head_digest()
    assert tokens.refused > before
    code, out = run("push", b.v1, registry.url("line7/cam", "canary"), "--insecure", "--registry-auth", wrong)
    assert code != 0 and "refused the credentials" in out and "Traceback" not in out


def test_token_registry_a_silent_token_service_is_an_error_within_the_timeout(token_registry):
    """oras asks for the token without a timeout; a token service that accepts and never answers must not
    hold the device's poll: one clear error after ``timeout`` seconds, and the next poll works."""
    registry, tokens = token_registry
    ref = OciRef.parse(registry.url("line7/cam", "canary"))
    tokens.answering.clear()
    try:
        start = time.monotonic()
        with pytest.raises(RegistryError, match=rf"token service {tokens.realm}: no answer within 1 s"):
            Registry(ref, insecure=True, auth_file=registry.auth_file, timeout=1).head_digest()
        assert time.monotonic() - start < 10
    finally:
        tokens.answering.set()
    Registry(ref, insecure=True, auth_file=registry.auth_file, timeout=5).ping()
