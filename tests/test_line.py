"""On the line: the genicam source against Aravis's fake GigE Vision camera, the opcua and modbus sinks
read by independent peers (asyncua's own client, pymodbus's client), software triggers, lost frames,
a camera that vanishes and comes back, and the one-line errors of bad configs."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_support import ThreadAgent, bundles, install
from line_support import FakeCamera, require_aravis
from net_helpers import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def b(tmp_path_factory):
    return bundles(tmp_path_factory)


@pytest.fixture(autouse=True)
def _aravis():
    require_aravis()


def camera_source(serial: str, trigger: str = "software", uri: str | None = None, **features) -> dict:
    return {"source": uri or f"genicam://serial={serial}",
            "source_options": {"trigger": trigger, "roi": [0, 0, 64, 64],
                               "features": {"PixelFormat": "BayerRG8", "ExposureTime": 1000.0, **features}}}




def start_pipeline(http, request: dict, timeout: float = 20.0) -> dict:
    """POST the pipeline and wait until its own thread has opened the camera and the sinks (the request
    only validates): the status once it runs, or fails (state 'error' with the one-line reason)."""
    answer = http.post("/v1/pipeline", json=request)
    if answer.status_code != 200:
        return {"state": "refused", "code": answer.status_code, "error": answer.json()["error"]}
    return wait_for(lambda: (s := http.get("/v1/pipeline").json()["status"]) and s["state"] != "starting" and s,
                    timeout, "the pipeline's start")


@pytest.fixture
def opcua_client():
    """asyncua's sync Client, whose event-loop thread is stopped at the end whatever happened: a client
    that never connected (or a failed assertion) would otherwise keep pytest from exiting."""
    from asyncua.sync import Client

    made = []

    def make(url: str):
        made.append(Client(url))
        return made[-1]

    yield make
    for client in made:
        if client.tloop.is_alive() and not client.tloop.loop.is_closed():  # a disconnect stopped it already
            client.tloop.stop()


def test_100_software_triggers_reach_an_independent_opcua_client_and_the_modbus_coil_pulses(tmp_path, b,
                                                                                             opcua_client):
    from pymodbus.client import ModbusTcpClient

    users = tmp_path / "opcua-users"
    users.write_text("# operators\nline:pa55\n")
    opc_port, mb_port = free_port(), free_port()
    request = {**camera_source("LINE1"), "sinks": [
        {"name": "opcua", "options": {"port": opc_port, "users_file": str(users), "name": "cell1"}},
        {"name": "modbus", "options": {"port": mb_port, "pulse_ms": 500, "accept_labels": []}},
        {"name": "jsonl", "options": {"path": str(tmp_path / "results.jsonl")}}]}
    with FakeCamera("LINE1"), ThreadAgent(tmp_path / "state", [b.pub]) as agent, agent.client() as http:
        install(http, b.v1)
        started = start_pipeline(http, request)
        assert started["state"] == "running", started
        opc = opcua_client(f"opc.tcp://127.0.0.1:{opc_port}/edgetl/")
        opc.set_user("line")
        opc.set_password("pa55")
        modbus = ModbusTcpClient("127.0.0.1", port=mb_port)
        assert modbus.connect()
        with opc:
            ns = opc.get_namespace_index("urn:edgetl:line")
            node = {name: opc.get_node(f"ns={ns};s=cell1.{name}")
                    for name in ("FrameId", "Inspected", "Rejected", "Label", "State", "Trigger", "ModelVersion")}
            obj = opc.get_node(f"ns={ns};s=cell1")
            seen = []
            for i in range(100):
                before = node["Inspected"].read_value()
                if i % 10 == 9:  # every tenth through the OPC UA method, the rest through the agent's route
                    obj.call_method(node["Trigger"])
                else:
                    assert http.post("/v1/pipeline/trigger").status_code == 200
                wait_for(lambda before=before: node["Inspected"].read_value() > before, 5, f"result of trigger {i + 1}",
                         every=0.005)
                seen.append(node["FrameId"].read_value())
                if i < 3:  # the coil comes on for a rejected part and goes off once the pulse ends
                    # (polled: the OPC UA count and the coil are two sinks; under load a single read
                    # could land before the coil was set or after a short pulse ended)
                    wait_for(lambda: modbus.read_coils(0, count=1).bits[0], 5, f"coil on after reject {i + 1}",
                             every=0.005)
                    wait_for(lambda: not modbus.read_coils(0, count=1).bits[0], 5, "coil off")
            assert node["Inspected"].read_value() == 100
            assert seen == sorted(seen) and len(set(seen)) == 100, seen
            registers = modbus.read_holding_registers(0, count=9).registers
            assert registers[0] + (registers[1] << 16) == seen[-1] and registers[2] == 1 and registers[4] == 100
            results = [line for line in (tmp_path / "results.jsonl").read_text().splitlines() if line]
            assert len(results) == 100
            import json

            docs = [json.loads(line) for line in results]
            assert [d["camera_frame_id"] for d in docs] == seen
            assert all(d["device_timestamp_ns"] > 0 and d["host_received"] > 0 for d in docs)
            assert node["Rejected"].read_value() == sum(d["label"] != "good" for d in docs)
            wait_for(lambda: node["State"].read_value() == "running", 3, "state published")
            assert node["ModelVersion"].read_value()
        modbus.close()
        status = http.get("/v1/pipeline").json()["status"]
        assert status["triggers"] == 100 and status["lost"] == 0 and status["frames"] == 100
        # anonymous access is off unless configured
        anonymous = opcua_client(f"opc.tcp://127.0.0.1:{opc_port}/edgetl/")
        with pytest.raises(Exception, match="IdentityToken"):
            anonymous.connect()
        http.post("/v1/pipeline", json={"action": "stop"})


def test_packet_loss_is_counted_and_results_keep_flowing(tmp_path, b):
    # 64x64 Mono8 is a few packets a frame: with 5 % of packets lost about a quarter of the frames are
    # incomplete (a 512x512 frame of ~190 packets would almost never arrive whole)
    request = {**camera_source("LOSSY", trigger="free-run", AcquisitionFrameRate=50.0),
               "sinks": [{"name": "jsonl", "options": {"path": str(tmp_path / "r.jsonl")}}]}
    with FakeCamera("LOSSY", loss_permille=50), ThreadAgent(tmp_path / "state", [b.pub]) as agent, \
            agent.client() as http:
        install(http, b.v1)
        assert start_pipeline(http, request)["state"] == "running"
        status = wait_for(lambda: (s := http.get("/v1/pipeline").json()["status"])["lost"] >= 3
                          and s["frames"] >= 3 and s, 20, "lost and delivered frames")
        assert status["state"] == "running" and status["source_stats"]["incomplete"] >= 3
        metrics = http.get("/metrics").text
        lost = next(line for line in metrics.splitlines() if line.startswith("edgetl_pipeline_lost_frames_total"))
        assert float(lost.split()[-1]) >= 3
        assert http.post("/v1/pipeline", json={"action": "stop"}).status_code == 200


def test_a_camera_that_vanishes_degrades_the_pipeline_which_recovers_by_itself(tmp_path, b):
    import numpy as np

    request = {**camera_source("VANISH", trigger="free-run", AcquisitionFrameRate=20.0),
               "sinks": [{"name": "jsonl", "options": {"path": str(tmp_path / "r.jsonl")}}]}
    request["source_options"]["timeout_ms"] = 300  # a silent camera is checked after 0.3 s
    camera = FakeCamera("VANISH").start()
    try:
        with ThreadAgent(tmp_path / "state", [b.pub]) as agent, agent.client() as http:
            install(http, b.v1)
            assert start_pipeline(http, request)["state"] == "running"
            wait_for(lambda: http.get("/v1/pipeline").json()["status"]["frames"] >= 3, 10, "first frames")
            camera.kill()
            status = wait_for(lambda: (s := http.get("/v1/pipeline").json()["status"])["health"] == "degraded"
                              and s, 20, "degraded")
            assert "VANISH" in status["reason"] and "\n" not in status["reason"]
            refused = http.post("/v1/pipeline/trigger")  # not queued for a camera that is away: try again later
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1", refused.text
            assert "away" in refused.json()["error"], refused.text
            import cv2

            ok, png = cv2.imencode(".png", np.zeros((32, 32, 3), np.uint8))
            assert http.post("/v1/predict", content=png.tobytes(),
                             headers={"Content-Type": "image/png"}).status_code == 200
            before = status["frames"]
            camera.start()
            status = wait_for(lambda: (s := http.get("/v1/pipeline").json()["status"])["frames"] > before + 3
                              and s, 30, "frames after the camera came back")
            assert status["health"] == "ok" and status["state"] == "running" and status["reconnects"] >= 1
            http.post("/v1/pipeline", json={"action": "stop"})
    finally:
        camera.kill()


def test_bad_line_configs_are_one_line_errors(tmp_path, b):
    taken = free_port()
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", taken))
    holder.listen()
    users = tmp_path / "users"
    users.write_text("a:b\n")
    # the camera by address (no discovery round, ~1 s each) where the case is about features or sinks;
    # by serial where the lookup is the point (NOPE, and the good start at the end)
    ip = "genicam://ip=127.0.0.1"
    cases = [
        ({**camera_source("NOPE")}, "no camera with serial 'NOPE'"),
        (camera_source("BADCFG", uri=ip, Shutter=5), "no feature 'Shutter'"),
        (camera_source("BADCFG", uri=ip, ExposureTime=1e9),
         "ExposureTime = 1000000000.0 µs is outside the camera's range 10..1e+07"),
        (camera_source("BADCFG", uri=ip, PixelFormat="Mono16"), "pixel format 'Mono16' is not supported"),
        ({**camera_source("BADCFG", uri=ip), "sinks": [{"name": "opcua", "options": {"port": taken,
                                                                                      "users_file": str(users)}}]},
         "is the port taken"),
        ({**camera_source("BADCFG", uri=ip), "sinks": [{"name": "opcua", "options": {"port": free_port()}}]},
         "anonymous access is off and no users_file"),
        ({**camera_source("BADCFG", uri=ip), "sinks": [{"name": "opcua", "options": {
            "port": free_port(), "users_file": str(tmp_path / "missing")}}]}, "option users_file: cannot read"),
    ]
    try:
        with FakeCamera("BADCFG"), ThreadAgent(tmp_path / "state", [b.pub]) as agent, agent.client() as http:
            for request, expected in cases:  # refused in the request (400) or by the pipeline's start (error)
                status = start_pipeline(http, request)
                assert status["state"] in ("refused", "error") and status.get("code", 400) == 400, (request, status)
                error = status["error"]
                assert expected in error and "\n" not in error, error
            # what `edgetl device cameras` lists is what a pipeline names
            import json

            from click.testing import CliRunner

            from edgetl.cli import cli

            listed = CliRunner().invoke(cli, ["device", "cameras", "--json"])
            assert listed.exit_code == 0, listed.output
            uris = [c["uri"] for c in json.loads(listed.stdout)["cameras"]]
            assert "genicam://serial=BADCFG" in uris
            # the camera was released by every refused start: a good config opens it
            assert start_pipeline(http, camera_source("BADCFG"))["state"] == "running"
            http.post("/v1/pipeline", json={"action": "stop"})
            trigger = http.post("/v1/pipeline/trigger")
            assert trigger.status_code == 400 and "no pipeline is running" in trigger.json()["error"]
    finally:
        holder.close()


def test_the_camera_path_delivers_image_files_pixel_exact(tmp_path):
    """examples/line/file_camera.py (what camera_accuracy.py compares with edgetl eval) through the source:
    every frame equals the file as edgetl eval decodes it, in RGB8 and Mono8, one per software trigger."""
    import sys
    import threading

    import cv2
    import numpy as np
    from edgetl_builtins.line.genicam import GenicamStream

    from edgetl.preprocess import read_image

    sys.path.insert(0, str(ROOT / "examples" / "line"))
    from file_camera import FileCamera

    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(files[-1]), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    with FileCamera(files, serial="FILES") as camera:
        for pixel_format, expect in (("RGB8", lambda im: im), ("Mono8", lambda im: cv2.cvtColor(
                cv2.cvtColor(im, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR))):
            camera.served = 0
            stream = GenicamStream("genicam://ip=127.0.0.1", {"trigger": "software", "roi": [0, 0, 64, 48],
                                                               "features": {"PixelFormat": pixel_format}})
            frames = []
            reader = threading.Thread(target=lambda s=stream, out=frames: out.extend(s))
            reader.start()
            for count in range(1, 4):
                stream.trigger()
                wait_for(lambda count=count, out=frames: len(out) >= count, 20, f"frame {count}")  # a loaded machine: pixels, not speed, are tested
            stream.interrupt()
            reader.join(5)
            stream.close()
            assert [np.array_equal(f.image, expect(read_image(p))) for f, p in zip(frames, files, strict=True)] \
                == [True] * 3, pixel_format
