"""``opcua`` sink: the pipeline's verdicts over OPC UA (asyncua), as a server or as a client of the PLC.

Server mode (default) runs an asyncua server inside the agent, one object per
pipeline (``name``, default ``line``) in the namespace ``urn:edgetl:line``,
every node a string NodeId ``<name>.<Node>`` (docs/deploy.md "On the line"
has the table): the last result, counters, the model's name/version/digest,
the pipeline's state and health, and a ``Trigger`` method that fires a
software trigger. Clients may read everything and call ``Trigger``; nothing is
writable. Anonymous access is off unless ``allow_anonymous: true``; users come
from ``users_file`` (``user:password`` lines). With ``certificate`` and
``private_key`` the endpoint also offers Basic256Sha256 (sign and encrypt);
``trusted_clients`` (a folder of client certificates, or of the CAs that sign
them; with ``require_encryption``) admits only the clients they vouch for.

Client mode (``mode: client``) writes each verdict into an existing node of the
PLC (``url``, ``node``), as the node's own type: Boolean gets ``reject``, a
string the label, a float the score, an integer 1 for reject and 0 for accept.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any

from edgetl.api import Frame, PipelineControl, Sink, SinkWriter
from edgetl.errors import ConfigError, MissingDependencyError
from edgetl_builtins.line.loop import LoopThread
from edgetl_builtins.line.verdict import Verdicts, read_secret, read_users

log = logging.getLogger("edgetl.sink.opcua")
NAMESPACE = "urn:edgetl:line"
STATUS_PERIOD_S = 0.5
# node -> (OPC UA type, initial value): the documented address space of one pipeline object
RESULT_NODES = {"Label": ("String", ""), "Score": ("Double", 0.0), "Decision": ("String", ""),
                "Reject": ("Boolean", False), "FrameId": ("UInt64", 0), "DeviceTimestampNs": ("UInt64", 0),
                "HostReceived": ("DateTime", None), "Published": ("DateTime", None)}
COUNTER_NODES = ("Inspected", "Rejected", "Errors", "LostFrames", "Triggers")
STATUS_NODES = ("State", "Health", "Reason", "ModelName", "ModelVersion", "ModelDigest")


# asyncua loads its whole standard address space before it listens: seconds on an idle machine, much more
# on a loaded one.
START_TIMEOUT_S = 60.0


def _asyncua():
    try:
        import asyncua
    except ModuleNotFoundError:
        raise MissingDependencyError("asyncua", "line", "sink 'opcua'") from None
    return asyncua


def _check_free(host: str, port: int, url: str) -> None:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"sink 'opcua': cannot listen on {url} ({exc.strerror or exc}); "
                              "is the port taken? set option port") from None


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds or time.time(), timezone.utc)


class _Users:
    """asyncua user manager: a known user/password pair, or anonymous only when allowed."""

    def __init__(self, users: dict[str, str], anonymous: bool):
        self.users, self.anonymous = users, anonymous

    def get_user(self, iserver, username=None, password=None, certificate=None):
        from asyncua.crypto.permission_rules import User, UserRole

        if username is None and certificate is None:
            return User(role=UserRole.User) if self.anonymous else None
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


class OpcUaServerWriter(SinkWriter):
    def __init__(self, options: dict[str, Any]):
        self.ua = _asyncua()
        self.name = str(options.get("name", "line"))
        self.host, self.port = str(options.get("host", "127.0.0.1")), int(options.get("port", 4840))
        anonymous = bool(options.get("allow_anonymous", False))
        users = read_users(options.get("users_file"), "opcua")
        if not users and not anonymous:
            raise ConfigError("sink 'opcua': anonymous access is off and no users_file is given "
                              "(set users_file: a file of user:password lines, or allow_anonymous: true)")
        self.verdicts = Verdicts(options, "opcua")
        self.control: PipelineControl | None = None
        self.url = f"opc.tcp://{self.host}:{self.port}/edgetl/"
        _check_free(self.host, self.port, self.url)  # before the slow address-space load
        self._loop = LoopThread("opcua-server")
        try:
            self._loop.run(self._start(_Users(users, anonymous), anonymous, options), timeout=START_TIMEOUT_S)
        except TimeoutError:  # an OSError too: it must not read as a taken port
            self._loop.stop()
            raise ConfigError(f"sink 'opcua': the server on {self.url} did not start within "
                              f"{START_TIMEOUT_S:.0f} s (is the machine overloaded?)") from None
        except OSError as exc:
            self._loop.stop()
            raise ConfigError(f"sink 'opcua': cannot listen on {self.url} ({exc.strerror or exc}); "
                              "is the port taken? set option port") from None
        except Exception:
            self._loop.stop()
            raise
        self._pending: list[Any] = []
        self._latest: dict[str, Any] | None = None
        self._latest_lock = threading.Lock()

    async def _start(self, users: _Users, anonymous: bool, options: dict[str, Any]) -> None:
        ua = self.ua.ua
        server = self.ua.Server(user_manager=users)
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name(f"edgetl line {self.name}")
        tokens = [ua.UserNameIdentityToken] + ([ua.AnonymousIdentityToken] if anonymous else [])
        server.set_identity_tokens(tokens)
        policies = [ua.SecurityPolicyType.NoSecurity]
        if options.get("certificate") and options.get("private_key"):
            await server.load_certificate(str(options["certificate"]))
            await server.load_private_key(str(options["private_key"]))
            policies.append(ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt)
            if options.get("require_encryption"):
                policies = policies[1:]
        server.set_security_policy(policies)
        if options.get("trusted_clients"):
            await self._trust(server, options)
        idx = await server.register_namespace(NAMESPACE)
        self.idx = idx
        obj = await server.nodes.objects.add_object(ua.NodeId(self.name, idx), self.name)
        self.nodes: dict[str, Any] = {}
        for name, (kind, value) in RESULT_NODES.items():
            self.nodes[name] = await self._variable(obj, name, value if value is not None else _when(0), kind)
        for name in COUNTER_NODES:
            self.nodes[name] = await self._variable(obj, name, 0, "UInt64")
        for name in STATUS_NODES:
            self.nodes[name] = await self._variable(obj, name, "", "String")
        await obj.add_method(ua.NodeId(f"{self.name}.Trigger", idx), ua.QualifiedName("Trigger", idx),
                             self._trigger_method, [], [ua.VariantType.UInt64])
        await server.start()
        self.server = server
        import asyncio

        self._status_task = asyncio.get_running_loop().create_task(self._status_loop())

    async def _trust(self, server, options: dict[str, Any]) -> None:
        """Only clients whose certificate the ``trusted_clients`` folder vouches for (itself, or its CA) get
        a session; asyncua's validator also checks the certificate's time range, application URI and
        key usage. A clear endpoint would let any user/password client past it: require_encryption."""
        from pathlib import Path

        from asyncua.crypto.truststore import TrustStore
        from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

        folder = Path(str(options["trusted_clients"]))
        if not (options.get("certificate") and options.get("private_key") and options.get("require_encryption")):
            raise ConfigError("sink 'opcua': trusted_clients needs certificate, private_key and require_encryption: "
                              "true (certificates are only checked on the encrypted endpoint)")
        if not folder.is_dir() or not any(folder.glob("*.*")):
            raise ConfigError(f"sink 'opcua': trusted_clients {folder}: expected a folder of client or CA "
                              "certificates (.pem/.der)")
        store = TrustStore([folder], [])
        await store.load()
        server.set_certificate_validator(CertificateValidator(
            CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT, store))

    async def _variable(self, parent, name: str, value: Any, kind: str):
        ua = self.ua.ua
        return await parent.add_variable(ua.NodeId(f"{self.name}.{name}", self.idx),
                                         ua.QualifiedName(name, self.idx),
                                         ua.Variant(value, getattr(ua.VariantType, kind)))

    async def _set(self, name: str, value: Any) -> None:
        ua = self.ua.ua
        kind = RESULT_NODES.get(name, ("UInt64" if name in COUNTER_NODES else "String", None))[0]
        await self.nodes[name].write_value(ua.DataValue(ua.Variant(value, getattr(ua.VariantType, kind))))

    async def _trigger_method(self, parent):
        """OPC UA method Trigger(): one software trigger; returns the number sent so far."""
        ua = self.ua.ua
        if self.control is None:
            raise ua.UaStatusCodeError(ua.StatusCodes.BadInvalidState)
        import asyncio

        try:
            done = await asyncio.get_running_loop().run_in_executor(None, self.control.trigger)
        except Exception as exc:
            log.warning("OPC UA trigger refused: %s", exc)
            raise ua.UaStatusCodeError(ua.StatusCodes.BadInvalidState) from None
        return [ua.Variant(int(done["trigger"]), ua.VariantType.UInt64)]

    async def _status_loop(self) -> None:
        import asyncio

        while True:
            try:
                await self._publish_status()
            except Exception as exc:  # keep serving; the next round retries
                log.debug("OPC UA status update failed: %s", exc)
            await asyncio.sleep(STATUS_PERIOD_S)

    async def _publish_status(self) -> None:
        if self.control is None:
            return
        import asyncio

        loop = asyncio.get_running_loop()
        status = await loop.run_in_executor(None, self.control.status)
        model = await loop.run_in_executor(None, self.control.model)
        for name, value in (("State", status.get("state")), ("Health", status.get("health")),
                            ("Reason", status.get("reason")), ("ModelName", model.get("name")),
                            ("ModelVersion", model.get("version")), ("ModelDigest", model.get("digest"))):
            await self._set(name, str(value or ""))
        await self._set("LostFrames", int(status.get("lost", 0)))
        await self._set("Triggers", int(status.get("triggers", 0)))

    def attach(self, control: PipelineControl) -> None:
        self.control = control

    def write(self, result: dict[str, Any], frame: Frame | None = None) -> None:
        """Hand the verdict to the server's loop. If the loop is behind (a busy CPU, many clients), only
        the newest verdict waits: the nodes never lag behind a queue, and the counters, written as
        totals, still count every result."""
        facts = self.verdicts.judge(result)
        with self._latest_lock:
            idle, self._latest = self._latest is None, facts
        if idle:
            self._pending = [f for f in self._pending if not f.done()]
            self._pending.append(self._loop.submit(self._drain()))

    async def _drain(self) -> None:
        while True:
            with self._latest_lock:
                facts = self._latest
            if facts is None:
                return
            await self._publish(facts)
            with self._latest_lock:
                if self._latest is facts:
                    self._latest = None
                    return

    async def _publish(self, facts: dict[str, Any]) -> None:
        try:
            # the result first, FrameId last: a client that polls FrameId finds the rest already there
            for name, key in (("Label", "label"), ("Score", "score"), ("Decision", "decision"), ("Reject", "reject"),
                              ("DeviceTimestampNs", "device_timestamp_ns")):
                await self._set(name, facts[key])
            await self._set("HostReceived", _when(facts["host_received"]))
            await self._set("Published", _when(time.time()))
            for name in ("Inspected", "Rejected", "Errors"):
                await self._set(name, facts[name.lower()])
            await self._set("FrameId", facts["frame_id"])
        except Exception as exc:
            self.verdicts.error()
            log.warning("OPC UA publish failed: %s", exc)

    def close(self) -> None:
        _settle(self._pending)
        try:
            self._status_task.cancel()
            self._loop.run(self.server.stop(), timeout=10)
        except Exception as exc:
            log.warning("OPC UA server stop failed: %s", exc)
        self._loop.stop()


class OpcUaClientWriter(SinkWriter):
    """Writes each verdict into one node of an existing OPC UA server (the PLC)."""

    def __init__(self, options: dict[str, Any]):
        self.ua = _asyncua()
        self.url = options.get("url")
        self.node_id = options.get("node")
        if not self.url or not self.node_id:
            raise ConfigError("sink 'opcua' (mode client): options url (opc.tcp://plc:4840) and node "
                              "(e.g. ns=2;s=Line.Verdict) are required")
        self.username = options.get("username")
        self.password = read_secret(options["password_file"], "opcua", "password_file") \
            if options.get("password_file") else None
        self.verdicts = Verdicts(options, "opcua")
        self._loop = LoopThread("opcua-client")
        try:
            self._loop.run(self._connect())
        except Exception as exc:
            self._loop.stop()
            raise ConfigError(f"sink 'opcua' (mode client): cannot use node {self.node_id} on {self.url} "
                              f"({type(exc).__name__}: {exc})") from None
        self._pending: list[Any] = []

    async def _connect(self) -> None:
        client = self.ua.Client(url=str(self.url))
        if self.username:
            client.set_user(str(self.username))
            client.set_password(self.password or "")
        await client.connect()
        self.client = client
        self.node = client.get_node(str(self.node_id))
        self.kind = await self.node.read_data_type_as_variant_type()

    def write(self, result: dict[str, Any], frame: Frame | None = None) -> None:
        facts = self.verdicts.judge(result)
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._loop.submit(self._write(facts)))

    async def _write(self, facts: dict[str, Any]) -> None:
        ua = self.ua.ua
        kinds = ua.VariantType
        if self.kind == kinds.Boolean:
            value = facts["reject"]
        elif self.kind == kinds.String:
            value = facts["label"]
        elif self.kind in (kinds.Float, kinds.Double):
            value = facts["score"]
        else:
            value = int(facts["reject"])
        try:
            await self.node.write_value(ua.DataValue(ua.Variant(value, self.kind)))
        except Exception as exc:
            self.verdicts.error()
            log.warning("OPC UA write to %s failed: %s", self.node_id, exc)

    def close(self) -> None:
        _settle(self._pending)
        try:
            self._loop.run(self.client.disconnect(), timeout=5)
        except Exception:
            pass
        self._loop.stop()


def _settle(pending: list[Any], timeout_s: float = 2.0) -> None:
    """Let the writes still in flight finish (each within ``timeout_s``) before the loop stops: the
    last verdict reaches the PLC; one that fails was already counted and logged by its writer."""
    for future in pending:
        try:
            future.result(timeout_s)
        except Exception:
            pass


class OpcUaSink(Sink):
    """OPC UA: a server inside the agent, or a client writing the verdict into the PLC's node."""

    name = "opcua"
    description = "OPC UA server (last result, counters, trigger method) or client writing the PLC's node"
    requires = ("asyncua",)
    extra = "line"

    def open(self, options: dict[str, Any]) -> SinkWriter:
        mode = options.get("mode", "server")
        if mode == "server":
            return OpcUaServerWriter(options)
        if mode == "client":
            return OpcUaClientWriter(options)
        raise ConfigError(f"sink 'opcua' option mode: expected server or client (got {mode!r})")
