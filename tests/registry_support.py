"""A real OCI registry (CNCF distribution, Debian's docker-registry) and a real MQTT broker
(mosquitto), each on a free loopback port with password auth, started and stopped by the test.

Both keep their data in the test's folder, so a registry can be stopped and started again on
the same port with the same content (a registry that goes down and comes back).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

from net_helpers import free_port
from system_support import require_program

USER, PASSWORD = "edgetl", "registry-pass-for-tests"


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"not listening on {port}: {log.read_text()[-2000:]}")


def docker_config(path: Path, host: str, user: str = USER, password: str = PASSWORD) -> Path:
    """A docker config.json holding ``user:password`` for ``host`` (what `docker login` writes)."""
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return path


class RegistryServer:
    """``docker-registry serve CONFIG`` on 127.0.0.1 with htpasswd (bcrypt) auth and deletes enabled;
    ``token``: Bearer-token auth by that :class:`TokenServer` instead of htpasswd."""

    def __init__(self, root: Path, port: int | None = None, tls: tuple[Path, Path] | None = None,
                 token: TokenServer | None = None):
        self.binary = require_program("docker-registry", "docker-registry")
        htpasswd = require_program("htpasswd", "apache2-utils")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        users = subprocess.run([htpasswd, "-Bbn", USER, PASSWORD], check=True, capture_output=True, text=True).stdout
        (self.root / "htpasswd").write_text(users)
        self.config = self.root / "config.yml"
        self.config.write_text(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
            + (f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n" if tls else "")
            + (f"auth:\n  token:\n    realm: {token.realm}\n    service: {token.SERVICE}\n"
               f"    issuer: {token.ISSUER}\n    rootcertbundle: {token.cert}\n" if token else
               f"auth:\n  htpasswd:\n    realm: edgetl-test\n    path: {self.root / 'htpasswd'}\n"))
        self.auth_file = docker_config(self.root / "docker-config.json", self.host)
        self.proc: subprocess.Popen | None = None
        self.log = self.root / "registry.log"

    def start(self) -> RegistryServer:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.binary, "serve", str(self.config)], stdout=log,
                                         stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc, self.log)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def blob_path(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob's bytes (to corrupt it in a test)."""
        hexd = digest.split(":", 1)[1]
        return self.root / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2] / hexd / "data"

    def url(self, repo: str, tag: str | None = None) -> str:
        return f"oci://{self.host}/{repo}" + (f":{tag}" if tag else "")

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Mosquitto:
    """mosquitto on 127.0.0.1 with a password file and no anonymous access; ``tls``: its listener speaks
    TLS only, with a certificate for 127.0.0.1 that is its own CA (``self.ca``, what a client trusts);
    ``client_certs``: it also wants a client certificate it trusts (mutual TLS): ``self.client_cert`` and
    ``self.client_key`` are one."""

    def __init__(self, root: Path, tls: bool = False, client_certs: bool = False):
        self.binary = require_program("mosquitto", "mosquitto")
        passwd = require_program("mosquitto_passwd", "mosquitto")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.passwords = self.root / "passwd"
        self.passwords.write_text("")
        subprocess.run([passwd, "-b", str(self.passwords), USER, PASSWORD], check=True, capture_output=True)
        self.passwords.chmod(0o600)
        self.config = self.root / "mosquitto.conf"
        self.ca: Path | None = None
        tls_lines = ""
        if tls:
            from agent_support import self_signed_cert

            self.ca, key = self_signed_cert(self.root)
            trusted = self.ca
            if client_certs:  # the broker trusts its own certificate and the client's (self-signed) one
                (self.root / "client").mkdir(exist_ok=True)
                self.client_cert, self.client_key = self_signed_cert(self.root / "client", "edgetl-test-device")
                trusted = self.root / "trusted.pem"
                trusted.write_bytes(self.ca.read_bytes() + self.client_cert.read_bytes())
            tls_lines = (f"cafile {trusted}\ncertfile {self.ca}\nkeyfile {key}\n"
                         + ("require_certificate true\n" if client_certs else ""))
        self.config.write_text(f"listener {self.port} 127.0.0.1\n{tls_lines}allow_anonymous false\n"
                               f"password_file {self.passwords}\npersistence false\n"
                               # as root mosquitto would switch to its own user, who cannot read pytest's tmp
                               + ("user root\n" if os.geteuid() == 0 else ""))
        self.auth_file = self.root / "mqtt-auth"
        self.auth_file.write_text(f"{USER}\n{PASSWORD}\n")
        self.log = self.root / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Mosquitto:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc, self.log)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class SlowProxy:
    """A TCP proxy on a free loopback port that passes the server's bytes on at ``rate`` bytes/s
    (so a test can interrupt a download half-way; 0: full speed; read per chunk, so a change applies to
    open connections too); :meth:`cut` drops every connection; :meth:`hold` stops the server's bytes
    until :meth:`release` (so a test sees what a client does before its download can go on)."""

    def __init__(self, upstream_port: int, rate: int = 256 * 1024):
        self.upstream_port, self.rate = upstream_port, rate
        self.flowing = threading.Event()
        self.flowing.set()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        self.conns: list[socket.socket] = []
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            self.conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def hold(self) -> None:
        self.flowing.clear()

    def release(self) -> None:
        self.flowing.set()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        chunk = 16 * 1024
        try:
            while True:
                data = src.recv(chunk)
                if not data:
                    break
                if from_server:
                    self.flowing.wait()
                dst.sendall(data)
                if from_server and self.rate:
                    time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            except OSError:
                pass
        self.conns = []

    def close(self) -> None:
        self.closed = True
        self.server.close()
        self.cut()


class TokenServer:
    """A registry token service on a free loopback port (the Docker/OCI token flow that Harbor, GHCR and
    Docker Hub speak): ``GET /token?service=…&scope=repository:NAME:ACTIONS`` with Basic ``USER:PASSWORD``
    answers a JWT (RS256, its certificate in the ``x5c`` header) granting those actions; anything else
    is a 401. ``scopes`` records every scope granted; while ``answering`` is clear a request waits (up to
    30 s) without an answer. The registry trusts ``self.cert`` (``RegistryServer(..., token=server)``)."""

    SERVICE, ISSUER = "edgetl-test-registry", "edgetl-test-token-issuer"

    def __init__(self, root: Path):
        import datetime
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.ISSUER)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        self.cert = Path(root) / "token-signer.pem"
        self.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.scopes: list[str] = []
        self.refused = 0
        self.answering = threading.Event()
        self.answering.set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                from urllib.parse import parse_qs, urlparse

                server.answering.wait(30)
                query = parse_qs(urlparse(self.path).query)
                basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != f"Basic {basic}" or query.get("service") != [server.SERVICE]:
                    server.refused += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"token": server.token(query.get("scope", [])), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def token(self, scopes: list[str]) -> str:
        """A JWT granting each ``repository:NAME:ACTIONS`` scope asked for."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        for scope in scopes:
            for one in scope.split(" "):
                kind, _, rest = one.partition(":")
                repo, _, actions = rest.rpartition(":")
                access.append({"type": kind, "name": repo, "actions": [a for a in actions.split(",") if a]})
                self.scopes.append(one)
        now = int(time.time())

        def part(doc: dict) -> str:
            return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

        head = part({"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]})
        claims = part({"iss": self.ISSUER, "sub": USER, "aud": self.SERVICE, "exp": now + 300, "nbf": now - 10,
                       "iat": now, "jti": os.urandom(8).hex(), "access": access})
        signature = self.key.sign(f"{head}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{head}.{claims}." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()

    def __enter__(self) -> TokenServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
