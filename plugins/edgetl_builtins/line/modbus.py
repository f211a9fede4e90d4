"""``modbus`` sink: Modbus TCP (pymodbus), a reject coil pulsed per rejected part and holding registers
with the last result, as a server the PLC polls or as a client writing into the PLC.

Holding registers from ``register_base`` (default 0), 16-bit words, 32-bit
values low word first:

| offset | value |
|---|---|
| 0, 1 | camera frame id (low, high) |
| 2 | 1 reject, 0 accept |
| 3 | score × 10000 (0..10000) |
| 4, 5 | inspected (low, high) |
| 6, 7 | rejected (low, high) |
| 8 | result sequence (mod 65536): changes with every result |

The reject coil (``reject_coil``, default 0) goes on for ``pulse_ms`` (default
100) when a part is rejected, then off; a reject that comes while the coil is
on restarts the pulse.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from edgetl.api import Frame, Sink, SinkWriter
from edgetl.errors import ConfigError, MissingDependencyError
from edgetl_builtins.line.loop import LoopThread
from edgetl_builtins.line.verdict import Verdicts

log = logging.getLogger("edgetl.sink.modbus")
N_REGISTERS = 9


def _words(value: int) -> list[int]:
    value = int(value) & 0xFFFFFFFF
    return [value & 0xFFFF, value >> 16]


def registers(facts: dict[str, Any], sequence: int) -> list[int]:
    """The holding registers of one verdict (the table above)."""
    score = int(round(min(max(facts["score"], 0.0), 1.0) * 10000))
    return [*_words(facts["frame_id"]), int(facts["reject"]), score, *_words(facts["inspected"]),
            *_words(facts["rejected"]), sequence & 0xFFFF]


class ModbusWriter(SinkWriter):
    def __init__(self, options: dict[str, Any]):
        try:
            import pymodbus  # noqa: F401
        except ModuleNotFoundError:
            raise MissingDependencyError("pymodbus", "line", "sink 'modbus'") from None
        self.mode = options.get("mode", "server")
        if self.mode not in ("server", "client"):
            raise ConfigError(f"sink 'modbus' option mode: expected server or client (got {self.mode!r})")
        self.host = str(options.get("host", "127.0.0.1"))
        self.port = int(options.get("port", 502 if self.mode == "client" else 5020))
        self.coil = int(options.get("reject_coil", 0))
        self.base = int(options.get("register_base", 0))
        self.pulse_s = float(options.get("pulse_ms", 100)) / 1000.0
        self.device_id = int(options.get("device_id", 1))
        if self.pulse_s <= 0:
            raise ConfigError(f"sink 'modbus' option pulse_ms: expected a positive number (got {options['pulse_ms']!r})")
        self.verdicts = Verdicts(options, "modbus")
        self.sequence = 0
        self._off_timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._loop = LoopThread(f"modbus-{self.mode}")
        try:
            self._loop.run(self._start_server() if self.mode == "server" else self._connect())
        except OSError as exc:
            self._loop.stop()
            raise ConfigError(f"sink 'modbus': cannot listen on {self.host}:{self.port} "
                              f"({exc.strerror or exc}); is the port taken? set option port") from None
        except ConfigError:
            self._loop.stop()
            raise

    # -- server: a datastore the PLC polls -------------------------------------------------
    async def _start_server(self) -> None:
        from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
        from pymodbus.server import ModbusTcpServer

        size = max(self.coil, self.base + N_REGISTERS) + 2  # the device context addresses block index a + 1
        self.device = ModbusDeviceContext(co=ModbusSequentialDataBlock(0, [False] * size),
                                          hr=ModbusSequentialDataBlock(0, [0] * size))
        self.server = ModbusTcpServer(ModbusServerContext(devices=self.device, single=True),
                                      address=(self.host, self.port))
        try:
            await self.server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus says "Could not start listen" for a taken port
            raise OSError(str(exc)) from None

    # -- client: write into the PLC ----------------------------------------------------------
    async def _connect(self) -> None:
        from pymodbus.client import AsyncModbusTcpClient

        self.client = AsyncModbusTcpClient(self.host, port=self.port, timeout=2, retries=1)
        if not await self.client.connect():
            raise ConfigError(f"sink 'modbus' (mode client): cannot connect to {self.host}:{self.port}")

    async def _write_coil(self, value: bool) -> None:
        if self.mode == "server":
            self.device.setValues(1, self.coil, [value])
        else:
            await self.client.write_coil(self.coil, value, device_id=self.device_id)

    async def _write_registers(self, values: list[int]) -> None:
        if self.mode == "server":
            self.device.setValues(3, self.base, values)
        else:
            await self.client.write_registers(self.base, values, device_id=self.device_id)

    # -- the sink --------------------------------------------------------------------------
    def write(self, result: dict[str, Any], frame: Frame | None = None) -> None:
        facts = self.verdicts.judge(result)
        with self._lock:
            self.sequence += 1
            values = registers(facts, self.sequence)
        self._loop.submit(self._publish(values, facts["reject"]))

    async def _publish(self, values: list[int], reject: bool) -> None:
        try:
            if reject:  # the coil first: it is what stops the part
                await self._write_coil(True)
                with self._lock:
                    if self._off_timer is not None:
                        self._off_timer.cancel()
                    self._off_timer = threading.Timer(self.pulse_s, self._pulse_end)
                    self._off_timer.daemon = True
                    self._off_timer.start()
            await self._write_registers(values)
        except Exception as exc:
            self.verdicts.error()
            log.warning("modbus write failed: %s", exc)

    def _pulse_end(self) -> None:
        try:
            self._loop.submit(self._write_coil(False)).result(5)
        except Exception as exc:
            self.verdicts.error()
            log.warning("modbus coil reset failed: %s", exc)

    def close(self) -> None:
        with self._lock:
            timer, self._off_timer = self._off_timer, None
        if timer is not None:
            timer.cancel()
            self._pulse_end()  # never leave the reject coil on
        try:
            if self.mode == "server":
                self._loop.run(self.server.shutdown(), timeout=5)
            else:
                self.client.close()
        except Exception as exc:
            log.warning("modbus close failed: %s", exc)
        self._loop.stop()


class ModbusSink(Sink):
    """Modbus TCP: a reject coil pulse and holding registers with the last result (server or client)."""

    name = "modbus"
    description = "Modbus TCP: reject coil pulse + holding registers with the last result (server or client)"
    requires = ("pymodbus",)
    extra = "line"

    def open(self, options: dict[str, Any]) -> SinkWriter:
        return ModbusWriter(dict(options or {}))
