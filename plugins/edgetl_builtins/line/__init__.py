"""On the factory line (device side, no torch): a GenICam camera source and PLC-facing sinks.

- ``genicam`` source: GigE Vision / USB3 Vision cameras through Aravis
  (:mod:`edgetl_builtins.line.genicam`), features from the pipeline config, software
  and hardware triggers, lost frames counted, reconnect with backoff.
- ``opcua`` sink: an OPC UA server inside the agent (asyncua) with the last
  result, counters, model facts, the pipeline state and a trigger method; or a
  client writing the verdict into a PLC's node (:mod:`edgetl_builtins.line.opcua`).
- ``modbus`` sink: a reject coil pulsed per rejected part and holding registers
  with the last result, as a Modbus TCP server or a client of the PLC
  (:mod:`edgetl_builtins.line.modbus`).

docs/deploy.md "On the line" has the node and register tables.
"""

from __future__ import annotations

from edgetl.hookspecs import hookimpl
from edgetl_builtins.line.genicam import GenicamSource
from edgetl_builtins.line.modbus import ModbusSink
from edgetl_builtins.line.opcua import OpcUaSink


@hookimpl
def edgetl_sources(register):
    register(GenicamSource())


@hookimpl
def edgetl_commands(cli):
    """``edgetl device cameras`` beside ``device info|rollback`` (the module imports only click)."""
    from edgetl_builtins.line.cli import cameras_cmd

    device = cli.commands.get("device")
    if device is not None:
        device.add_command(cameras_cmd)


@hookimpl
def edgetl_sinks(register):
    register(OpcUaSink())
    register(ModbusSink())
