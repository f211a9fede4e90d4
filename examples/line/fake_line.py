"""A whole inspection cell on loopback: Aravis's fake GigE Vision camera -> agent -> OPC UA + Modbus.

    python examples/line/fake_line.py [--triggers N] [--hz F] [--loss PERMILLE]

Trains the texture set's linear probe (or reuses ``demo-out/line/model.edgetl``),
exports it through the accuracy gate (the ``x86-onnxruntime-cpu`` profile, INT8
first), starts ``arv-fake-gv-camera-0.8 -i 127.0.0.1`` and ``edgetl agent serve``
with a ``genicam`` source in software-trigger mode and the ``opcua`` and
``modbus`` sinks, fires N software triggers through the agent's
``POST /v1/pipeline/trigger`` at F per second, and reads every verdict back with
an independent OPC UA client (asyncua's) and the Modbus coil with pymodbus's
client. Everything it started is stopped at the end. The last line printed is
one JSON document: ``{"triggers", "results", "lost", "p50_ms", "p99_ms",
"opcua_results", ...}`` (latency: trigger sent -> the verdict's frame id visible
on the OPC UA node).

Needs the ``line`` extra and Debian's ``aravis-tools`` and ``gir1.2-aravis-0.8``
(``make venv`` installs them as root).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EDGETL = [sys.executable, "-m", "edgetl"]
OUT = ROOT / "demo-out" / "line"
FAKE_CAMERA = "arv-fake-gv-camera-0.8"
SERIAL = "EDGETL-LINE"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def edgetl(*args: object) -> None:
    print("$ edgetl " + " ".join(str(a) for a in args), file=sys.stderr, flush=True)
    subprocess.run([*EDGETL, *map(str, args)], cwd=ROOT, check=True, stdout=sys.stderr)


def prepare_bundle(out: Path) -> tuple[Path, Path]:
    """(signed bundle, public key): reused when already made, else data -> train -> export through the gate."""
    bundle, pub = out / "model.edgetl", out / "line.pub"
    if bundle.exists() and pub.exists():
        print(f"reusing {bundle}", file=sys.stderr)
        return bundle, pub
    out.mkdir(parents=True, exist_ok=True)
    data = ROOT / "data" / "textures"
    if not (data / "test").exists():
        edgetl("data", "textures", data)
    run = out / "run"
    if not (run / "model.pt2").exists():
        edgetl("train", ROOT / "examples/defect_detection/textures-linear-probe.yaml", "--out", run,
               "--set", f"data.train={data}/train", "--set", f"data.val={data}/val", "--set", f"data.test={data}/test")
    edgetl("keys", "generate", out / "line")
    edgetl("export", run, "--target", "x86-onnxruntime-cpu", "--sign", out / "line.key", "--out", bundle)
    return bundle, pub


class Cell:
    """The fake camera, the agent (its own process) and the pipeline, stopped on exit whatever happens."""

    def __init__(self, bundle: Path, pub: Path, work: Path, loss_permille: int = 0,
                 roi: tuple[int, int, int, int] = (0, 0, 512, 512), pixel_format: str = "BayerRG8",
                 serial: str = SERIAL, start_camera: bool = True):
        self.bundle, self.pub, self.work, self.loss = bundle, pub, work, loss_permille
        self.serial, self.start_camera = serial, start_camera
        self.roi, self.pixel_format = list(roi), pixel_format
        self.procs: list[subprocess.Popen] = []
        self.opc_port, self.mb_port, self.port = free_port(), free_port(), free_port()
        self.token = "line-example-token"

    def __enter__(self) -> "Cell":
        import httpx

        try:
            if self.work.exists():
                shutil.rmtree(self.work)
            self.work.mkdir(parents=True)
            if self.start_camera:
                if shutil.which(FAKE_CAMERA) is None:
                    sys.exit(f"fake_line: {FAKE_CAMERA} not found; apt-get install aravis-tools")
                args = [FAKE_CAMERA, "-i", "127.0.0.1", "-s", self.serial] + (["-r", str(self.loss)] if self.loss else [])
                self.camera = self._spawn(args, self.work / "camera.log")
            (self.work / "token").write_text(self.token + "\n")
            (self.work / "opcua-users").write_text("line:line-example\n")
            self.agent = self._spawn([*EDGETL, "agent", "serve", "--state-dir", self.work / "state", "--host",
                                      "127.0.0.1", "--port", self.port, "--token-file", self.work / "token",
                                      "--trust", self.pub, "--data-root", self.work, "--log-level", "warning"],
                                     self.work / "agent.log")
            self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60,
                                     headers={"Authorization": f"Bearer {self.token}"})
            self._wait_agent()
            installed = self.http.put("/v1/model", content=self.bundle.read_bytes(),
                                      headers={"Content-Type": "application/octet-stream"})
            installed.raise_for_status()
            self._wait_install(installed.json()["install_id"])
            request = {"source": f"genicam://serial={self.serial}", "source_options": {
                "trigger": "software", "roi": self.roi, "features": {"PixelFormat": self.pixel_format}},
                "sinks": [{"name": "opcua", "options": {"port": self.opc_port, "name": "cell",
                                                        "users_file": str(self.work / "opcua-users")}},
                          {"name": "modbus", "options": {"port": self.mb_port, "pulse_ms": 20}},
                          {"name": "jsonl", "options": {"path": str(self.work / "results.jsonl")}}]}
            started = self.http.post("/v1/pipeline", json=request)
            if started.status_code != 200:
                raise RuntimeError(f"pipeline refused: {started.text}")
            self._wait_pipeline()
            return self
        except BaseException:
            self.__exit__()
            raise

    def _spawn(self, args: list, log: Path) -> subprocess.Popen:
        proc = subprocess.Popen([str(a) for a in args], cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def _wait_agent(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.agent.poll() is not None:
                raise RuntimeError(f"agent exited: {(self.work / 'agent.log').read_text()[-2000:]}")
            try:
                if self.http.get("/v1/health", timeout=1).status_code == 200:
                    return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError("agent did not start within 60 s")

    def _wait_pipeline(self) -> None:
        """The request only validates: the pipeline opens the camera and the sinks in its own thread."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = self.status()
            if status["state"] == "running":
                return
            if status["state"] == "error":
                raise RuntimeError(f"pipeline did not start: {status['error']}")
            time.sleep(0.1)
        raise RuntimeError("pipeline did not start within 60 s")

    def _wait_install(self, install_id: str) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            doc = self.http.get(f"/v1/model/install/{install_id}").json()
            if doc["status"] == "installed":
                return
            if doc["status"] == "failed":
                raise RuntimeError(f"install failed: {doc}")
            time.sleep(0.1)
        raise RuntimeError("install did not finish within 120 s")

    def status(self) -> dict:
        return self.http.get("/v1/pipeline").json()["status"]

    def results(self) -> list[dict]:
        path = self.work / "results.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []

    def __exit__(self, *exc) -> None:
        http = getattr(self, "http", None)
        if http is not None:
            try:
                http.post("/v1/pipeline", json={"action": "stop"}, timeout=20)
            except Exception:
                pass
            http.close()
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


class Watcher:
    """Independent peers polling the cell every 5 ms, as a PLC task would: asyncua's client on
    FrameId/Inspected, pymodbus's on the coil and the result-sequence register. Records when each new
    result became visible on each (a poll finds it up to 5 ms late). Polling much faster measures the
    polls: both servers live in the agent's process and share its interpreter with the inference."""

    def __init__(self, cell: Cell, poll_s: float = 0.005):
        self.cell, self.poll_s = cell, poll_s
        self.opcua: list[tuple[float, int]] = []  # (time seen, FrameId)
        self.modbus: list[tuple[float, int]] = []  # (time seen, sequence register)
        self.coil_on = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._opcua, daemon=True),
                         threading.Thread(target=self._modbus, daemon=True)]
        self._ready = threading.Barrier(3)

    def __enter__(self) -> "Watcher":
        for thread in self._threads:
            thread.start()
        self._ready.wait(60)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _opcua(self) -> None:
        from asyncua.sync import Client

        client = Client(f"opc.tcp://127.0.0.1:{self.cell.opc_port}/edgetl/")
        client.set_user("line")
        client.set_password("line-example")
        with client:
            ns = client.get_namespace_index("urn:edgetl:line")
            inspected = client.get_node(f"ns={ns};s=cell.Inspected")
            frame_id = client.get_node(f"ns={ns};s=cell.FrameId")
            last = inspected.read_value()
            self._ready.wait(60)
            while not self._stop.is_set():
                now = inspected.read_value()
                if now != last:
                    seen = time.time()
                    self.opcua.extend((seen, frame_id.read_value()) for _ in range(now - last))
                    last = now
                time.sleep(self.poll_s)

    def _modbus(self) -> None:
        from pymodbus.client import ModbusTcpClient

        client = ModbusTcpClient("127.0.0.1", port=self.cell.mb_port)
        client.connect()
        last = client.read_holding_registers(0, count=9).registers[8]
        self._ready.wait(60)
        coil_was = False
        while not self._stop.is_set():
            sequence = client.read_holding_registers(0, count=9).registers[8]
            coil = client.read_coils(0, count=1).bits[0]
            if coil and not coil_was:
                self.coil_on += 1
            coil_was = coil
            if sequence != last:
                self.modbus.extend([(time.time(), sequence)] * ((sequence - last) % 65536))
                last = sequence
            time.sleep(self.poll_s)
        client.close()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))], 2)


def latencies(watcher: Watcher, sent: list[float], results: list[dict]) -> tuple[list[float], list[float]]:
    """Trigger -> visible, in ms, for each verdict seen on OPC UA and on Modbus.

    A verdict is paired with the last trigger sent before its frame's device timestamp (the fake
    cameras stamp frames with this host's clock), so a lost frame does not shift the pairing of the
    ones after it. Modbus sightings carry the result sequence; the k-th result is the k-th line of
    the results file.
    """
    import bisect

    device = {r["camera_frame_id"]: r["device_timestamp_ns"] / 1e9 for r in results}
    by_sequence = [r["device_timestamp_ns"] / 1e9 for r in results]

    def trigger_before(when: float | None) -> float | None:
        k = bisect.bisect_right(sent, when) - 1 if when is not None else -1
        return sent[k] if k >= 0 else None

    opc = [(seen - t) * 1000 for seen, frame_id in watcher.opcua
           if (t := trigger_before(device.get(frame_id))) is not None]
    first = len(results) - len(watcher.modbus)  # results before the watch began (a warm-up frame)
    mb = [(seen - t) * 1000 for k, (seen, _) in enumerate(watcher.modbus)
          if 0 <= first + k < len(by_sequence) and (t := trigger_before(by_sequence[first + k])) is not None]
    return opc, mb


def fire(cell: Cell, triggers: int, hz: float) -> dict:
    """N software triggers at ``hz`` through the agent; latency per trigger to the OPC UA node and Modbus."""
    sent: list[float] = []
    with Watcher(cell) as watcher:
        start = time.monotonic()
        for i in range(triggers):
            time.sleep(max(0.0, start + i / hz - time.monotonic()))
            sent.append(time.time())
            cell.http.post("/v1/pipeline/trigger").raise_for_status()
        deadline = time.monotonic() + 5
        while len(watcher.opcua) < triggers and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
    status = cell.status()
    lost = status["lost"]
    opc_ms, mb_ms = latencies(watcher, sent, cell.results())
    ids = [frame_id for _, frame_id in watcher.opcua]
    return {"triggers": triggers, "results": status["frames"], "lost": lost, "dropped": status["dropped"],
            "p50_ms": percentile(opc_ms, 50), "p99_ms": percentile(opc_ms, 99),
            "max_ms": round(max(opc_ms), 2) if opc_ms else None,
            "modbus_p50_ms": percentile(mb_ms, 50), "modbus_p99_ms": percentile(mb_ms, 99),
            "modbus_max_ms": round(max(mb_ms), 2) if mb_ms else None, "opcua_results": len(watcher.opcua),
            "opcua_frame_ids_increasing": ids == sorted(ids),  # two results within one poll show one id twice
            "modbus_results": len(watcher.modbus), "reject_coil_pulses": watcher.coil_on, "hz": hz,
            "_sent": sent, "_opcua": watcher.opcua}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--triggers", type=int, default=100)
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--loss", type=int, default=0, metavar="PERMILLE",
                        help="GVSP packets the fake camera drops per thousand (its -r)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    os.environ.setdefault("EDGETL_LOAD_PLUGINS", "")
    bundle, pub = prepare_bundle(args.out)
    with Cell(bundle, pub, args.out / "cell", loss_permille=args.loss) as cell:
        summary = fire(cell, args.triggers, args.hz)
    print(json.dumps({k: v for k, v in summary.items() if not k.startswith("_")}), flush=True)


if __name__ == "__main__":
    main()
