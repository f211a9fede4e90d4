"""The line page's parts without a browser: the capture store's bounds, the live feed, sessions, logins."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from edgetl.device.capture import CaptureStore
from edgetl.device.live import FrameRecord, LiveFeed
from edgetl.device.ui.auth import MAX_SESSIONS, Sessions
from edgetl.errors import ConfigError


def doc(score: float, threshold: float = 0.5) -> dict:
    label = "anomaly" if score >= threshold else "good"
    return {"label": label, "scores": {"good": 1 - score, "anomaly": score}, "anomaly_score": score,
            "threshold": threshold, "latency_ms": 2.0, "model": "m-1"}


def record(i: int, score: float = 0.2, size: int = 32) -> FrameRecord:
    image = np.random.default_rng(i).integers(0, 255, (size, size, 3), dtype=np.uint8)
    return FrameRecord(id=i, frame=i, source="cam", time=1_800_000_000 + i, doc=doc(score), alarm=score >= 0.5,
                       score=score, image=image)


def test_the_store_drops_unmarked_captures_first_then_the_oldest_marked(tmp_path):
    store = CaptureStore(tmp_path / "capture", max_bytes=10**9, min_free_bytes=0)
    for i in range(6):
        store.add(record(i, size=64), "low_margin")
    marked = [store.mark(record(10 + i, size=64), "missed_defect", "anomaly") for i in range(3)]
    one = sum(p.stat().st_size for p in (tmp_path / "capture").iterdir()) / 9
    store.max_bytes = int(4.5 * one)
    store.enforce_quota()
    kept = store.list()
    assert [c["id"] for c in kept if c["mark"]] == [m["id"] for m in marked]  # all marks kept
    assert len([c for c in kept if not c["mark"]]) == 1  # the newest sample only
    store.max_bytes = int(1.5 * one)
    store.enforce_quota()
    assert [c["id"] for c in store.list()] == [marked[-1]["id"]]  # then the oldest marks go
    assert store.stats["dropped_quota"] == 8


def test_the_store_never_fills_the_disk_and_survives_a_torn_write(tmp_path):
    root = tmp_path / "capture"
    store = CaptureStore(root, min_free_bytes=10**15)  # more than any disk has free
    assert store.add(record(1), "low_margin") is None and store.stats["skipped_disk"] == 1
    assert list(root.iterdir()) == []
    (root / "20260101T000000-000001.png").write_bytes(b"half")  # a crash between the PNG and its sidecar
    (root / ".x.tmp").write_text("{")
    CaptureStore(root)
    assert list(root.iterdir()) == []


def test_marks_persist_update_in_place_and_ids_cannot_escape(tmp_path):
    store = CaptureStore(tmp_path / "capture", min_free_bytes=0)
    first = store.mark(record(1), "false_reject", "good")
    again = store.mark(record(1), "label", "scratch")
    assert again["id"] == first["id"] and len(store.list()) == 1
    reopened = CaptureStore(tmp_path / "capture", min_free_bytes=0)
    assert [(c["mark"], c["label"]) for c in reopened.list()] == [("label", "scratch")]
    sidecar = json.loads((tmp_path / "capture" / f"{first['id']}.json").read_text())
    assert sidecar["result"]["anomaly_score"] == 0.2 and sidecar["margin"] == pytest.approx(0.3)
    for bad in ("../../etc/passwd", "x", "", first["id"] + "/.."):
        assert reopened.image_path(bad) is None and reopened.get(bad) is None
    with pytest.raises(ConfigError, match="label"):
        store.mark(record(2), "label", "<script>")
    with pytest.raises(ConfigError, match="mark"):
        store.mark(record(2), "oops", None)


def test_close_calls_are_sampled_at_most_once_per_period_off_the_pipeline_thread(tmp_path):
    store = CaptureStore(tmp_path / "capture", min_free_bytes=0, margin=0.1, sample_every_s=3600)
    store.sample(record(1, score=0.9))   # far from the threshold: not a close call
    store.sample(record(2, score=0.45))  # close: kept
    store.sample(record(3, score=0.47))  # close, but within the period
    store.drain()
    deadline = time.monotonic() + 5
    while not store.list() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [(c["frame"], c["reason"]) for c in store.list()] == [(2, "low_margin")]


class Model(SimpleNamespace):
    pass


def test_the_threshold_preview_counts_the_decisions_that_would_flip():
    feed = LiveFeed()
    for i, score in enumerate([0.1, 0.3, 0.45, 0.55, 0.7, 0.95]):
        feed(dict(doc(score), frame=i, source="cam", timestamp=0.0), SimpleNamespace(image=None, anomaly_map=None))
    model = Model(name="m-1", labels=["good", "anomaly"], threshold=0.5, positive="anomaly", task="anomaly")
    assert feed.preview(0.5, model)["flips"] == 0
    up = feed.preview(0.8, model)
    assert (up["n"], up["flips"], up["to_accept"], up["to_reject"]) == (6, 2, 2, 0)
    down = feed.preview(0.2, model)
    assert (down["flips"], down["to_reject"], down["rejected_now"], down["rejected_then"]) == (2, 2, 3, 5)
    assert feed.counters()["rejected"] == 3 and feed.counters()["last_minute"]["inspected"] == 6
    argmax = Model(name="m-1", labels=["a", "b", "c"], threshold=None, positive=None, task="classify")
    with pytest.raises(ValueError, match="argmax"):
        feed.preview(0.3, argmax)


def test_live_pictures_are_drawn_at_a_bounded_rate_whatever_the_number_of_readers():
    feed = LiveFeed(max_render_fps=2.0, rejects=3)
    image = np.full((480, 640, 3), 90, np.uint8)
    drawn = []
    original = feed.draw
    feed.draw = lambda rec, width: drawn.append(rec.id) or original(rec, width)
    start = time.monotonic()
    for i in range(40):  # a 40 fps camera, and a reader asking after every frame
        feed(dict(doc(0.9 if i % 2 else 0.1), frame=i, source="cam", timestamp=0.0),
             SimpleNamespace(image=image, anomaly_map=None))
        record, jpeg = feed.live_picture()
        assert jpeg[:2] == b"\xff\xd8"
        time.sleep(0.025)
    elapsed = time.monotonic() - start
    assert len(drawn) <= 2 * elapsed + 2  # ~2 a second, not 40
    assert len(feed.rejects) == 3 and len(feed.shown) <= feed.shown_max  # bounded, whatever ran


def test_sessions_are_bounded_and_roles_come_from_the_tokens():
    sessions = Sessions("admin-token-xxxxxxxxxxxxxxxx", "viewer-token-xxxxxxxxxxxxxxx")
    assert sessions.role_for("admin-token-xxxxxxxxxxxxxxxx") == "admin"
    assert sessions.role_for(" viewer-token-xxxxxxxxxxxxxxx\n") == "viewer"
    assert sessions.role_for("admin-token") is None and sessions.role_for("") is None
    sids = [sessions.open("viewer")[0] for _ in range(MAX_SESSIONS + 10)]
    assert sessions.get(sids[0]) is None and sessions.get(sids[-1]) is not None
    assert len(sessions._sessions) == MAX_SESSIONS


def test_failed_logins_are_throttled_and_bodies_are_capped(tmp_path):
    from agent_support import ThreadAgent

    from edgetl.keys import generate_keypair

    _, pub = generate_keypair(tmp_path / "k")
    with ThreadAgent(tmp_path / "state", [pub]) as agent:
        codes = [httpx.post(agent.url + "/ui/login", data={"token": f"wrong-{i}"}).status_code for i in range(7)]
        assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]
        big = httpx.post(agent.url + "/ui/login", content=b"token=" + b"x" * 70_000,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert big.status_code == 413  # the API's JSON body limit applies to the page too
        # the agent's bearer API does not open the page, and the page's cookie does not open the API
        assert httpx.get(agent.url + "/ui/api/state", headers={"Authorization": f"Bearer {agent.token}"}
                         ).status_code == 401
        assert httpx.get(agent.url + "/v1/info", cookies={"edgetl_session": "x"}).status_code == 401


def test_a_viewer_token_equal_to_the_admin_token_is_refused(tmp_path):
    from click.testing import CliRunner

    from edgetl.cli import cli

    token = tmp_path / "token"
    token.write_text("the-same-token-for-both-roles-here\n")
    result = CliRunner().invoke(cli, ["agent", "serve", "--state-dir", str(tmp_path / "s"), "--token-file", str(token),
                                      "--trust", str(token), "--viewer-token-file", str(token)])
    assert result.exit_code == 1 and "viewer token is the admin token" in result.output


def test_the_page_says_when_there_is_no_model_no_pipeline_or_no_camera(tmp_path):
    from agent_support import ThreadAgent

    from edgetl.device.ui.routes import notices
    from edgetl.keys import generate_keypair

    _, pub = generate_keypair(tmp_path / "k")
    with ThreadAgent(tmp_path / "state", [pub]) as agent:
        login = httpx.post(agent.url + "/ui/login", data={"token": agent.token})
        assert login.status_code == 303
        state = httpx.get(agent.url + "/ui/api/state", cookies=login.cookies).json()
        assert [n["code"] for n in state["notices"]] == ["no_model", "no_pipeline"]
        assert state["model"] is None and state["latest"] is None and state["counters"]["inspected"] == 0
        assert httpx.get(agent.url + "/ui/api/live.jpg", cookies=login.cookies).status_code == 404
        view = SimpleNamespace(agent=SimpleNamespace(model=object()))
        gone = {"state": "reconnecting", "running": True, "error": "rtsp://cam: connection refused", "reconnects": 3}
        [notice] = notices(view, gone, None)
        assert notice["code"] == "camera_gone" and "connection refused" in notice["text"]
        fine = {"state": "running", "running": True, "error": None, "reconnects": 0}
        assert [n["code"] for n in notices(view, fine, {"time": time.time() - 60})] == ["stale"]
        assert notices(view, fine, {"time": time.time()}) == []
