"""Issue 13's attacks over real HTTP against a torch-blocked agent process, memory measured.

The disk-full tests measure no memory: their agent runs in this process.
Each memory test resets the agent's peak-RSS mark, attacks, and checks the peak stayed within
:data:`MEMORY_BOUND` of the RSS before the attack (docs/deploy.md, "Limits"). Without the fixes
these attacks take the agent up by the size of the attack (hundreds of MiB here).
"""

from __future__ import annotations

import socket
import time
import zipfile
from contextlib import contextmanager

import hostile
import httpx
import pytest
from agent_support import ProcessAgent, ThreadAgent, bundles, install, serving, upload, write_token

MIB = 1024 * 1024
MEMORY_BOUND = 64 * MIB  # the agent's peak RSS rises by at most this much under any attack below


@pytest.fixture(scope="module")
def b(tmp_path_factory):
    return bundles(tmp_path_factory)


@pytest.fixture(scope="module")
def agent(tmp_path_factory, b):
    root = tmp_path_factory.mktemp("hostile")
    running = ProcessAgent(root / "state", [b.pub], write_token(root / "token"),
                           extra_args=["--upload-idle-timeout", "1", "--max-bundle-mb", "64"]).wait_ready()
    try:
        with running.client() as client:
            assert install(client, b.v1)["status"] == "installed"
        yield running
    finally:
        running.stop()
    assert running.blocked_imports() == []


class Peak:
    """``with Peak(agent) as p: attack()`` then ``p.rise``: the agent's peak RSS over its RSS before."""

    def __init__(self, agent):
        self.agent = agent

    def __enter__(self):
        self.before = self.agent.reset_peak_rss()
        return self

    def __exit__(self, *exc):
        time.sleep(0.2)
        self.rise = self.agent.peak_rss() - self.before


def _stream(mib: int, piece: bytes = b" "):
    for _ in range(mib):
        yield piece * MIB


def test_a_body_with_a_wrong_token_is_refused_before_it_is_read(agent):
    for method, path in (("PATCH", "/v1/model/threshold"), ("POST", "/v1/pipeline"), ("PUT", "/v1/model")):
        with Peak(agent) as peak, httpx.Client(base_url=agent.url, timeout=60) as anon:
            try:
                r = anon.request(method, path, content=_stream(128), headers={
                    "Authorization": "Bearer wrong", "Content-Type": "application/json",
                    "Content-Length": str(128 * MIB)})
                assert r.status_code == 401 and "token" in r.json()["error"]
            except httpx.HTTPError:
                pass  # answered 401 and closed while the body was still being sent: also unread
        assert peak.rise < MEMORY_BOUND, (path, peak.rise / MIB)
    with agent.client() as client:
        assert client.get("/v1/info").status_code == 200


def _status(client: httpx.Client, method: str, path: str, **kwargs) -> int | None:
    """The answer's status, or None when the agent closed the connection while the body was sent."""
    try:
        return client.request(method, path, **kwargs).status_code
    except httpx.HTTPError:
        return None


def test_json_bodies_are_capped_by_content_length_and_while_streaming(agent):
    json_type = {"Content-Type": "application/json"}
    with Peak(agent) as peak, agent.client() as client:
        r = client.patch("/v1/model/threshold", content=b" " * MIB, headers=json_type)
        assert r.status_code == 413 and "too large" in r.json()["error"]
        # no Content-Length (chunked): refused at the first chunk past the cap
        assert _status(client, "POST", "/v1/pipeline", content=_stream(64), headers=json_type) in (413, None)
        assert _status(client, "PATCH", "/v1/model/threshold", content=_stream(1), headers=json_type) == 413
    assert peak.rise < MEMORY_BOUND, peak.rise / MIB


def test_metrics_labels_stay_bounded_whatever_methods_and_paths_clients_invent(agent):
    with httpx.Client(base_url=agent.url) as anon:
        anon.get("/v1/health")
        before = anon.get("/metrics").text
        for i in range(30):  # 60 invented label values: unbounded, they would be 60 series over the bound of 20
            anon.request(f"M{i:07d}", "/v1/health")
            anon.get(f"/no/such/path/{i}")
        after = anon.get("/metrics").text
    series = [line for line in after.splitlines() if line.startswith("edgetl_requests_total{")]
    assert 'method="other"' in after and "M0000001" not in after and "/no/such" not in after
    assert len(series) <= 20, series
    assert len(after) - len(before) < 4000


def test_docs_and_openapi_need_the_token(agent):
    with httpx.Client(base_url=agent.url) as anon:
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert anon.get(path).status_code == 401, path
    with agent.client() as client:
        assert client.get("/openapi.json").status_code == 200


HOSTILE_BUNDLES = {
    "zip_bomb_256mib_member": (lambda b, d: hostile.zip_bomb(b.v2, d, b.key, 256), "exceeds the limit"),
    "manifest_inflates_to_48mib": (lambda b, d: hostile.reserved_member_bomb(d, "manifest.json", 48),
                                   "manifest.json declares"),
    "signature_inflates_to_48mib": (lambda b, d: hostile.reserved_member_bomb(d, "signature", 48),
                                    "signature declares"),
    "too_many_members": (lambda b, d: hostile.many_members(d, 12_000), "more than the limit of 10000"),
}


@pytest.mark.parametrize("case", list(HOSTILE_BUNDLES))
def test_hostile_bundles_are_refused_from_the_zip_directory_in_bounded_memory(agent, b, tmp_path, case):
    make, message = HOSTILE_BUNDLES[case]
    bad = make(b, tmp_path / f"{case}.edgetl")
    with Peak(agent) as peak, agent.client() as client:
        status = install(client, bad)
        assert status["status"] == "failed" and status["stage"] == "verify", status
        assert message in status["error"], status["error"]
        assert str(agent.url) not in status["error"] and "/state" not in status["error"]
        assert serving(client) == b.v1_version
    assert peak.rise < MEMORY_BOUND, (case, peak.rise / MIB)


def test_the_duplicate_member_check_is_linear(tmp_path):
    """40k members took 72 s with ``names.count`` (quadratic); a complexity guard, not a speed target."""
    from edgetl.bundle import check_directory

    infos = [zipfile.ZipInfo(f"model/m{i}") for i in range(40_000)]
    start = time.monotonic()
    check_directory(tmp_path, infos, 1 << 30, 50_000)
    assert time.monotonic() - start < 10


IMAGE_BOMBS = {
    "png_12000x12000": (lambda b: hostile.png_bomb(12_000, 12_000), "image/png", 413, "over the limit"),
    "png_over_2^30_pixels": (lambda b: hostile.png_bomb(33_000, 33_000, rows=16), "image/png", 413,
                             "over the limit"),
    "jpeg_with_a_40mib_tail": (lambda b: hostile.jpeg_with_tail(b.jpeg(), 40), "image/jpeg", 413, "too large"),
    "gif_sent_as_png": (lambda b: b"GIF89a" + b"\0" * 100, "image/png", 415, "neither JPEG nor PNG"),
}


@pytest.mark.parametrize("case", list(IMAGE_BOMBS))
def test_image_bombs_are_refused_from_the_header_in_bounded_memory(agent, b, case):
    make, kind, code, message = IMAGE_BOMBS[case]
    data = make(b)
    with Peak(agent) as peak, agent.client() as client:
        r = client.post("/v1/predict", content=data, headers={"Content-Type": kind})
        assert r.status_code == code and message in r.json()["error"], (r.status_code, r.text)
        ok = client.post("/v1/predict", content=b.jpeg(), headers={"Content-Type": "image/jpeg"})
        assert ok.status_code == 200
    assert peak.rise < MEMORY_BOUND + len(data), (case, peak.rise / MIB)


def test_a_stalled_upload_times_out_and_frees_the_slot(agent, b):
    with socket.create_connection(("127.0.0.1", agent.port)) as sock:
        sock.sendall(b"PUT /v1/model HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + agent.token.encode()
                     + b"\r\nContent-Type: application/octet-stream\r\nContent-Length: 500000\r\n\r\nPK")
        sock.settimeout(10)
        answer = ""
        while "upload stalled" not in answer and (chunk := sock.recv(4096)):
            answer += chunk.decode(errors="replace")
    assert " 408 " in answer.splitlines()[0] and "upload stalled" in answer
    with agent.client() as client:
        assert install(client, b.v2)["status"] == "installed"
        assert client.post("/v1/model/rollback").status_code == 200
        assert serving(client) == b.v1_version


def test_a_trickling_upload_is_dropped_and_frees_the_slot(agent, b):
    """One byte every 0.3 s never trips the 1 s idle timeout; the minimum average rate does."""
    with socket.create_connection(("127.0.0.1", agent.port)) as sock:
        sock.sendall(b"PUT /v1/model HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + agent.token.encode()
                     + b"\r\nContent-Type: application/octet-stream\r\nContent-Length: 500000\r\n\r\n")
        sock.settimeout(0.3)
        answer = b""
        deadline = time.monotonic() + 15
        while b"upload too slow" not in answer and time.monotonic() < deadline:
            try:
                sock.sendall(b"P")
                answer += sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
    assert b" 408 " in answer and b"upload too slow" in answer, answer
    with agent.client() as client:
        assert upload(client, b.v1).status_code == 202  # serving v1 already: a no-op install, slot free


def test_json_types_are_strict(agent):
    with agent.client() as client:
        for bad in (False, True, "0.5", None, [0.5]):
            r = client.patch("/v1/model/threshold", json={"threshold": bad})
            assert r.status_code == 422 and "threshold" in r.json()["error"], bad
        r = client.post("/v1/pipeline", json={"source": "x", "fps_limit": "10"})
        assert r.status_code == 422
        assert client.patch("/v1/model/threshold", json={"threshold": 1}).json()["threshold"] == 1.0
        client.patch("/v1/model/threshold", json={"threshold": 0.5})


@contextmanager
def _disk_full_agent(tmp_path, agent, b, where, monkeypatch):
    """An agent in this process (no memory to measure here) on a copy of the module agent's state
    (serving v1) whose disk fills at ``where``."""
    import shutil

    shutil.copytree(agent.state_dir, tmp_path / "state", ignore=shutil.ignore_patterns("uploads", "staging"))
    monkeypatch.setenv("EDGETL_TEST_DISK_FULL", f"{where}:1000")
    with ThreadAgent(tmp_path / "state", [b.pub], token=agent.token) as running, running.client() as client:
        yield client


def test_disk_full_during_upload_is_507_and_frees_the_slot(tmp_path, agent, b, monkeypatch):
    with _disk_full_agent(tmp_path, agent, b, "upload", monkeypatch) as client:
        for _ in range(2):  # the second is refused the same way, not 409: the slot was freed
            r = upload(client, b.v2)
            assert r.status_code == 507 and "disk is full" in r.json()["error"], r.text
        assert list((tmp_path / "state" / "uploads").iterdir()) == []
        assert serving(client) == b.v1_version
        assert client.post("/v1/predict", content=b.jpeg(),
                           headers={"Content-Type": "image/jpeg"}).status_code == 200


def test_disk_full_during_extract_fails_the_install_and_keeps_the_old_model(tmp_path, agent, b, monkeypatch):
    with _disk_full_agent(tmp_path, agent, b, "extract", monkeypatch) as client:
        for _ in range(2):
            status = install(client, b.v2)
            assert status["status"] == "failed" and status["stage"] == "stage", status
            assert "No space left" in status["error"] and str(tmp_path) not in status["error"]
            assert "disk is full (507" in status["error"] and "internal error" not in status["error"]
        assert serving(client) == b.v1_version
        assert list((tmp_path / "state" / "staging").iterdir()) == []


def test_port_taken_is_one_clear_error_without_agent_ready(tmp_path, b):
    import subprocess
    import sys

    from agent_support import BLOCKED_RUNNER

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run([sys.executable, "-c", BLOCKED_RUNNER, "agent", "serve", "--state-dir",
                              str(tmp_path / "s"), "--port", str(port), "--token-file",
                              str(write_token(tmp_path / "t")), "--trust", str(b.pub)],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr + out.stdout
    assert "agent ready" not in out.stderr + out.stdout
