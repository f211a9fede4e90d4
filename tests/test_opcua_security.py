"""The ``opcua`` sink's server with a certificate: Basic256Sha256 sign-and-encrypt to an independent
asyncua client holding its own certificate, ``require_encryption`` turning the clear endpoint away, and
``trusted_clients`` admitting only the certificates it holds.
In-process (the sink opened through the plugin manager, as the agent does), on a free loopback port."""

from __future__ import annotations

import datetime
import ipaddress
import time
from pathlib import Path

import pytest
from net_helpers import free_port

from edgetl.plugins import get_manager

USER, PASSWORD = "line", "pa55"


def app_certificate(folder: Path, name: str, server: bool) -> tuple[Path, Path]:
    """An RSA application instance certificate (OPC 10000-6 6.2.2: the application URI in its SAN) and its
    key, PEM, made by asyncua's own helpers."""
    from asyncua.crypto.cert_gen import (
        dump_private_key_as_pem,
        generate_private_key,
        generate_self_signed_app_certificate,
    )
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = generate_private_key()
    cert = generate_self_signed_app_certificate(
        key, f"urn:edgetl:test:{name}", {"organizationName": "edgetl tests"},
        [x509.UniformResourceIdentifier(f"urn:edgetl:test:{name}"), x509.DNSName("localhost"),
         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH], days=1)
    assert cert.not_valid_after_utc > datetime.datetime.now(datetime.timezone.utc)
    cert_path, key_path = folder / f"{name}.crt.pem", folder / f"{name}.key.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.PEM))
    key_path.write_bytes(dump_private_key_as_pem(key))
    return cert_path, key_path


@pytest.fixture
def secured(tmp_path):
    """The sink's server with a certificate and require_encryption, one verdict written; (url, certs)."""
    server_cert, server_key = app_certificate(tmp_path, "server", server=True)
    users = tmp_path / "opcua-users"
    users.write_text(f"{USER}:{PASSWORD}\n")
    port = free_port()
    writer = get_manager().get("sink", "opcua").open(
        {"port": port, "name": "cell1", "users_file": str(users), "certificate": str(server_cert),
         "private_key": str(server_key), "require_encryption": True})
    writer.write({"label": "defect", "scores": {"good": 0.2, "defect": 0.8}, "frame": 7})
    try:
        yield f"opc.tcp://127.0.0.1:{port}/edgetl/", server_cert, tmp_path
    finally:
        writer.close()


def _client(url: str):
    from asyncua.sync import Client

    client = Client(url)
    client.set_user(USER)
    client.set_password(PASSWORD)
    return client


def _stop(client) -> None:
    """A sync client that never connected keeps its event-loop thread: stop it (pytest would hang)."""
    if client.tloop.is_alive() and not client.tloop.loop.is_closed():
        client.tloop.stop()


def test_a_client_with_its_own_certificate_reads_the_verdict_over_basic256sha256(secured):
    url, server_cert, folder = secured
    client_cert, client_key = app_certificate(folder, "client", server=False)
    client = _client(url)
    try:
        client.application_uri = "urn:edgetl:test:client"
        client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{client_cert},{client_key},{server_cert}")
        with client:
            assert client.aio_obj.security_policy.URI.endswith("#Basic256Sha256")
            ns = client.get_namespace_index("urn:edgetl:line")
            label, frame = (client.get_node(f"ns={ns};s=cell1.{n}") for n in ("Label", "FrameId"))
            deadline = time.monotonic() + 5
            while frame.read_value() != 7 and time.monotonic() < deadline:  # the verdict is written async
                time.sleep(0.02)
            assert frame.read_value() == 7 and label.read_value() == "defect"
            assert client.get_node(f"ns={ns};s=cell1.Rejected").read_value() == 1
    finally:
        _stop(client)


def test_require_encryption_offers_no_clear_endpoint_and_a_clear_client_is_turned_away(secured):
    from asyncua.sync import Client

    url, _, _ = secured
    probe = Client(url)
    try:
        endpoints = probe.connect_and_get_server_endpoints()
        assert endpoints and {e.SecurityPolicyUri.rsplit("#", 1)[-1] for e in endpoints} == {"Basic256Sha256"}
        assert all(e.SecurityMode.name == "SignAndEncrypt" for e in endpoints)
    finally:
        _stop(probe)
    from asyncua.ua.uaerrors import UaError

    clear = _client(url)  # no certificate, NoSecurity: the server lists no endpoint it could use
    try:
        with pytest.raises(UaError, match="No matching endpoints.*SecurityPolicy#None"):
            clear.connect()
    finally:
        _stop(clear)


def test_trusted_clients_admits_the_certificates_it_holds_and_turns_a_stranger_away(tmp_path):
    import shutil

    from edgetl.errors import ConfigError

    server_cert, server_key = app_certificate(tmp_path, "server", server=True)
    trusted = {name: app_certificate(tmp_path, name, server=False) for name in ("client", "stranger")}
    folder = tmp_path / "trusted-clients"
    folder.mkdir()
    shutil.copy(trusted["client"][0], folder / "client.pem")  # the stranger's certificate is not in it
    users = tmp_path / "opcua-users"
    users.write_text(f"{USER}:{PASSWORD}\n")
    sink = get_manager().get("sink", "opcua")
    base = {"name": "cell1", "users_file": str(users), "certificate": str(server_cert),
            "private_key": str(server_key), "trusted_clients": str(folder)}
    with pytest.raises(ConfigError, match="trusted_clients needs certificate, private_key and require_encryption"):
        sink.open({**base, "port": free_port()})  # a clear endpoint would let any password client past it
    port = free_port()
    writer = sink.open({**base, "port": port, "require_encryption": True})
    writer.write({"label": "good", "scores": {"good": 0.9, "defect": 0.1}, "frame": 11})
    url = f"opc.tcp://127.0.0.1:{port}/edgetl/"
    try:
        for name, admitted in (("client", True), ("stranger", False)):
            client = _client(url)
            try:
                client.application_uri = f"urn:edgetl:test:{name}"
                cert, key = trusted[name]
                client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key},{server_cert}")
                if admitted:
                    with client:
                        ns = client.get_namespace_index("urn:edgetl:line")
                        frame = client.get_node(f"ns={ns};s=cell1.FrameId")
                        deadline = time.monotonic() + 5
                        while frame.read_value() != 11 and time.monotonic() < deadline:
                            time.sleep(0.02)
                        assert frame.read_value() == 11
                else:
                    from asyncua.ua.uaerrors import BadCertificateUntrusted

                    with pytest.raises(BadCertificateUntrusted):
                        client.connect()
            finally:
                _stop(client)
    finally:
        writer.close()
