"""``edgetl agent serve``: TLS on 127.0.0.1, the refusal to serve plain HTTP beyond loopback, its flags."""

from __future__ import annotations

import json

import httpx
import pytest
from agent_support import ProcessAgent, bundles, self_signed_cert, write_token
from click.testing import CliRunner

from edgetl.cli import cli


@pytest.fixture(scope="module")
def b(tmp_path_factory):
    return bundles(tmp_path_factory)


def serve_args(tmp_path, b, *extra):
    return ["agent", "serve", "--state-dir", str(tmp_path / "state"), "--token-file",
            str(write_token(tmp_path / "token")), "--trust", str(b.pub), *extra]


def test_a_bind_beyond_loopback_without_tls_is_refused(tmp_path, b):
    result = CliRunner().invoke(cli, serve_args(tmp_path, b, "--host", "0.0.0.0"))
    assert result.exit_code == 2
    assert "refusing to listen on 0.0.0.0 without TLS" in result.output and "--insecure-http" in result.output
    result = CliRunner().invoke(cli, serve_args(tmp_path, b, "--host", "0.0.0.0", "--tls-cert", "c.pem"))
    assert result.exit_code == 2 and "--tls-cert and --tls-key go together" in result.output


def test_serve_flags_fail_with_one_line_errors(tmp_path, b):
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    result = CliRunner().invoke(cli, ["agent", "serve", "--state-dir", str(tmp_path / "s"), "--token-file",
                                      str(empty), "--trust", str(b.pub)])
    assert result.exit_code == 1 and "token file is empty" in result.output
    result = CliRunner().invoke(cli, ["agent", "serve", "--state-dir", str(tmp_path / "s"), "--token-file",
                                      str(write_token(tmp_path / "t")), "--trust", str(tmp_path / "nokey.pub"),
                                      "--port", "0"])  # never a fixed port: an agent may be running on 8470
    assert result.exit_code == 1 and "nokey.pub" in result.output
    result = CliRunner().invoke(cli, ["agent", "serve", "--state-dir", str(tmp_path / "s"), "--token-file",
                                      str(tmp_path / "t")])
    assert result.exit_code == 2 and "--trust" in result.output


def test_port_0_the_port_file_and_device_wait_find_the_agent_and_say_when_it_is_another(tmp_path, b):
    from net_helpers import free_port

    token = write_token(tmp_path / "token")
    port_file = tmp_path / "agent.port"
    port_file.write_text("1\n")  # left by an earlier run: re-read until the new agent writes its own
    agent = ProcessAgent(tmp_path / "state", [b.pub], token, extra_args=["--port", "0", "--port-file", str(port_file)])
    try:
        result = CliRunner().invoke(cli, ["device", "wait", "http://127.0.0.1", "--port-file", str(port_file),
                                          "--token-file", str(token), "--timeout", "30"])
        assert result.exit_code == 0, result.output
        port = int(port_file.read_text())
        assert port != 1 and result.stdout.strip() == f"http://127.0.0.1:{port}" and "ready" in result.stderr
        other = write_token(tmp_path / "other.token", "another-agents-token-0123")  # not this agent
        result = CliRunner().invoke(cli, ["device", "wait", f"http://127.0.0.1:{port}", "--token-file", str(other)])
        assert result.exit_code == 1 and "does not accept this token: it is not the agent" in result.stderr
        result = CliRunner().invoke(cli, ["deploy", str(b.v1), "--device", f"http://127.0.0.1:{port}",
                                          "--token-file", str(other)])
        assert result.exit_code == 1 and "not the agent the token belongs to" in result.output
        url, auth = f"http://127.0.0.1:{port}", ["--token-file", str(token)]
        assert CliRunner().invoke(cli, ["deploy", str(b.v1), "--device", url, *auth]).exit_code == 0
        result = CliRunner().invoke(cli, ["device", "threshold", "0.25", "--device", url, *auth])
        assert result.exit_code == 0 and result.stdout.strip().endswith("-> 0.250"), result.output
        result = CliRunner().invoke(cli, ["device", "info", "--device", url, *auth])
        assert "threshold 0.250" in result.stdout, result.output  # three decimals, not sixteen digits
    finally:
        agent.stop()
    result = CliRunner().invoke(cli, ["device", "wait", f"http://127.0.0.1:{free_port()}", "--timeout", "0.5"])
    assert result.exit_code == 1 and "no agent ready after 0.5 s" in result.stderr and "cannot connect" in result.stderr


def test_tls_agent_serves_https_and_deploy_trusts_it_with_ca(tmp_path, b):
    cert, key = self_signed_cert(tmp_path)
    token = write_token(tmp_path / "token")
    agent = ProcessAgent(tmp_path / "state", [b.pub], token, ca=cert,
                         extra_args=["--tls-cert", str(cert), "--tls-key", str(key)]).wait_ready()
    try:
        assert agent.url.startswith("https://127.0.0.1:")
        with pytest.raises(httpx.ConnectError):  # the system CAs do not know this agent
            httpx.get(agent.url + "/v1/health")
        result = CliRunner().invoke(cli, ["deploy", str(b.v1), "--device", agent.url, "--token-file", str(token),
                                          "--ca", str(cert)])
        assert result.exit_code == 0, result.output
        result = CliRunner().invoke(cli, ["device", "info", "--device", agent.url, "--token-file", str(token),
                                          "--ca", str(cert), "--json"])
        assert json.loads(result.output)["current"]["model_version"] == b.v1_version
        with agent.client() as client:
            assert client.post("/v1/predict", content=b.jpeg(), headers={"Content-Type": "image/jpeg"}).status_code == 200
    finally:
        agent.stop()
    assert agent.blocked_imports() == []
