"""The opcua and modbus sinks in client mode: writing verdicts into a PLC played by the libraries' own
servers (asyncua's Server, pymodbus's ModbusTcpServer) started here on loopback."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from net_helpers import free_port

from edgetl.errors import ConfigError

DEFECT = {"label": "defect", "scores": {"defect": 0.9, "good": 0.1}, "camera_frame_id": 70001}
GOOD = {"label": "good", "scores": {"defect": 0.2, "good": 0.8}, "camera_frame_id": 70002}


class LoopThread:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout=60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def wait_for(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def test_opcua_client_mode_writes_the_verdict_into_the_plcs_node_in_its_type(tmp_path):
    from asyncua import Server, ua
    from edgetl_builtins.line.opcua import OpcUaSink

    port, loop = free_port(), LoopThread()

    async def plc():
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/plc/")
        idx = await server.register_namespace("urn:test:plc")
        line = await server.nodes.objects.add_object(idx, "Line")
        reject = await line.add_variable(ua.NodeId("Line.Reject", idx), "Reject", False)
        label = await line.add_variable(ua.NodeId("Line.Label", idx), "Label", "")
        for node in (reject, label):
            await node.set_writable()
        await server.start()
        return server, idx, reject, label

    server, idx, reject, label = loop.run(plc())
    try:
        writers = [OpcUaSink().open({"mode": "client", "url": f"opc.tcp://127.0.0.1:{port}/plc/",
                                     "node": f"ns={idx};s=Line.{name}"}) for name in ("Reject", "Label")]
        for writer in writers:
            writer.write(DEFECT)
        assert wait_for(lambda: loop.run(reject.read_value()) is True and loop.run(label.read_value()) == "defect")
        for writer in writers:
            writer.write(GOOD)
            writer.close()
        assert loop.run(reject.read_value()) is False and loop.run(label.read_value()) == "good"
        with pytest.raises(ConfigError, match=r"cannot use node ns=\d+;s=Line.Missing"):
            OpcUaSink().open({"mode": "client", "url": f"opc.tcp://127.0.0.1:{port}/plc/",
                              "node": f"ns={idx};s=Line.Missing"})
    finally:
        loop.run(server.stop())
        loop.stop()


def test_modbus_client_mode_pulses_the_plcs_coil_and_writes_its_registers():
    from edgetl_builtins.line.modbus import ModbusSink
    from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
    from pymodbus.server import ModbusTcpServer

    port, loop = free_port(), LoopThread()
    device = ModbusDeviceContext(co=ModbusSequentialDataBlock(0, [False] * 32), hr=ModbusSequentialDataBlock(0, [0] * 64))

    async def plc():
        server = ModbusTcpServer(ModbusServerContext(devices=device, single=True), address=("127.0.0.1", port))
        await server.serve_forever(background=True)
        return server

    server = loop.run(plc())
    try:
        writer = ModbusSink().open({"mode": "client", "port": port, "reject_coil": 5, "register_base": 10,
                                    "pulse_ms": 200})
        writer.write(DEFECT)
        assert wait_for(lambda: device.getValues(1, 5, 1) == [True])
        assert wait_for(lambda: device.getValues(3, 10, 9)[8] == 1)
        registers = device.getValues(3, 10, 9)
        assert registers[0] + (registers[1] << 16) == 70001 and registers[2] == 1 and registers[3] == 9000
        assert wait_for(lambda: device.getValues(1, 5, 1) == [False], 2)  # the pulse ended
        writer.write(GOOD)
        assert wait_for(lambda: device.getValues(3, 10, 9)[8] == 2)
        assert device.getValues(1, 5, 1) == [False] and device.getValues(3, 10, 9)[2] == 0
        writer.close()
        with pytest.raises(ConfigError, match="cannot connect"):
            ModbusSink().open({"mode": "client", "port": free_port()})
    finally:
        loop.run(server.shutdown())
        loop.stop()
