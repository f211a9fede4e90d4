"""Agents for tests: in a thread (fast, many at once) or in a torch-blocked subprocess (kill -9 able).

Plus bundle variants: a copy of a real bundle with its manifest or members
edited and re-signed, the way a tampering or mistaken exporter would make one.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from net_helpers import free_port

ROOT = Path(__file__).resolve().parents[1]

# A meta_path finder that refuses torch/timm/torchvision imports and records every attempt in
# $EDGETL_TEST_BLOCK_LOG. An availability probe (importlib.util.find_spec, as `plugins list` does)
# imports nothing and is let through.
BLOCKED_RUNNER = r"""
import os, sys
class _Block:
    names = ('torch', 'torchvision', 'timm')
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] not in self.names:
            return None
        frame, importing = sys._getframe(1), False
        while frame is not None:
            if frame.f_code.co_name == '_find_and_load_unlocked':
                importing = True
                break
            if frame.f_code.co_name == 'find_spec' and 'importlib' in frame.f_code.co_filename:
                break
            frame = frame.f_back
        if not importing:
            return None  # a probe (find_spec) imports nothing: let it look
        log = os.environ.get('EDGETL_TEST_BLOCK_LOG')
        if log:
            with open(log, 'a') as out:
                out.write(name + '\\n')
        raise ModuleNotFoundError(f'{name} is blocked: the device side must not import it', name=name)
sys.meta_path.insert(0, _Block())
from edgetl.cli import main
sys.argv = ['edgetl'] + sys.argv[1:]
main()
"""


def write_token(path: Path, token: str = "s3cret-token-for-tests") -> Path:
    path.write_text(token + "\n")
    return path


class ThreadAgent:
    """An Agent + uvicorn on 127.0.0.1 in this process (a thread per agent).

    Pipelines may use paths under pytest's temp root (two levels above ``state_dir``) unless
    ``limits`` says otherwise.
    """

    def __init__(self, state_dir: Path, trusted: list[Path], token: str = "s3cret-token-for-tests",
                 app_kwargs: dict[str, Any] | None = None, **agent_kwargs: Any):
        import uvicorn

        from edgetl.device.agent import Agent
        from edgetl.device.app import create_app
        from edgetl.device.limits import Limits

        self.token = token
        agent_kwargs.setdefault("limits", Limits(data_roots=(str(Path(state_dir).resolve().parents[1]),)))
        self.agent = Agent(state_dir, trusted, **agent_kwargs)
        self.agent.startup()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(self.agent, token, **(app_kwargs or {})), host="127.0.0.1", port=self.port,
                                log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ThreadAgent":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("agent did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.agent.shutdown()

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token or self.token}"},
                            timeout=30)


class ProcessAgent:
    """``edgetl agent serve`` in a subprocess whose torch imports are blocked (and logged)."""

    def __init__(self, state_dir: Path, trusted: list[Path], token_file: Path, env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None, ca: Path | None = None):
        self.port = free_port()
        self.ca = ca
        self.state_dir = state_dir
        self.url = f"{'https' if ca else 'http'}://127.0.0.1:{self.port}"
        self.token = token_file.read_text().strip()
        self.block_log = state_dir.parent / f"{state_dir.name}.blocked.log"
        args = [sys.executable, "-c", BLOCKED_RUNNER, "agent", "serve", "--state-dir", str(state_dir),
                "--port", str(self.port), "--token-file", str(token_file), "--log-level", "warning"]
        for key in trusted:
            args += ["--trust", str(key)]
        args += extra_args or []
        full_env = dict(os.environ, EDGETL_TEST_BLOCK_LOG=str(self.block_log), **(env or {}))
        self.log_path = state_dir.parent / f"{state_dir.name}.agent.log"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=full_env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 30) -> "ProcessAgent":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited ({self.proc.returncode}): {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/v1/health", timeout=1, verify=str(self.ca) if self.ca else True
                             ).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"agent not ready: {self.log_path.read_text()[-2000:]}")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30,
                            verify=str(self.ca) if self.ca else True)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode

    def reset_peak_rss(self) -> int:
        """Reset the kernel's peak-RSS mark of the agent (``clear_refs``); return its RSS now, bytes."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        return _proc_status(self.proc.pid, "VmRSS")

    def peak_rss(self) -> int:
        """The agent's peak RSS since the last reset (VmHWM), bytes."""
        return _proc_status(self.proc.pid, "VmHWM")

    def blocked_imports(self) -> list[str]:
        return self.block_log.read_text().split() if self.block_log.exists() else []


def _proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def self_signed_cert(folder: Path, name: str = "edgetl-test-agent") -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and localhost) and its key, PEM; the cert is its own CA. Give two
    certificates one peer must tell apart different ``name``s: a verifier finds an issuer by its name."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "agent.crt", folder / "agent.key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def upload(client: httpx.Client, bundle: Path) -> httpx.Response:
    return client.put("/v1/model", content=bundle.read_bytes(), headers={"Content-Type": "application/octet-stream"})


def wait_install(client: httpx.Client, install_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = client.get(f"/v1/model/install/{install_id}").json()
        if doc["status"] in ("installed", "failed"):
            return doc
        time.sleep(0.05)
    raise TimeoutError(f"install {install_id} did not finish")


def install(client: httpx.Client, bundle: Path) -> dict[str, Any]:
    response = upload(client, bundle)
    assert response.status_code == 202, response.text
    return wait_install(client, response.json()["install_id"])


def serving(client: httpx.Client) -> str | None:
    current = client.get("/v1/info").json()["current"]
    return current["model_version"] if current else None


def resign(src: Path, dst: Path, key_path: Path | None,
           edit_manifest: Callable[[dict], None] | None = None,
           edit_members: Callable[[dict[str, bytes]], None] | None = None) -> Path:
    """Copy ``src`` with its manifest/members edited, re-hashed and signed by ``key_path`` (None: unsigned)."""
    from edgetl.bundle import open_bundle, write_bundle
    from edgetl.keys import load_private_key

    with open_bundle(src) as bundle:
        manifest = json.loads(bundle.manifest_bytes)
        members = {n: bundle.read(n) for n in bundle.names if n not in ("manifest.json", "signature")
                   and not n.endswith("/")}
    if edit_manifest:
        edit_manifest(manifest)
    if edit_members:
        edit_members(members)
    key = load_private_key(key_path) if key_path else None
    return write_bundle(dst, manifest, members, private_key=key)


def with_symlink_member(src: Path, dst: Path, key_path: Path, link_name: str = "model/escape",
                        link_target: str = "../../../../etc/passwd") -> Path:
    """A signed bundle (hashes all right) that also holds a symbolic-link member."""
    from edgetl.bundle import manifest_bytes, open_bundle, sha256_bytes
    from edgetl.keys import load_private_key, sign

    with open_bundle(src) as bundle:
        manifest = json.loads(bundle.manifest_bytes)
        members = {n: bundle.read(n) for n in bundle.names if n not in ("manifest.json", "signature")}
    manifest["files"][link_name] = sha256_bytes(link_target.encode())
    raw = manifest_bytes(manifest)
    with zipfile.ZipFile(dst, "w") as zf:
        zf.writestr("manifest.json", raw)
        for name, data in members.items():
            zf.writestr(name, data)
        info = zipfile.ZipInfo(link_name)
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, link_target)
        zf.writestr("signature", json.dumps(sign(raw, load_private_key(key_path))))
    return dst


_BUNDLES: dict[str, Any] = {}


class Bundles:
    """Real bundles from tests/bundle_factory.py, made once per session.

    Attributes:
        key, pub: the release key pair the agents trust.
        other_key, other_pub: a key pair nobody trusts.
        v1: the tiny ONNX FP32 bundle, signed by ``key``.
        v2: the same model re-signed as model_version ``…-v2`` (a second release).
    """

    def __init__(self, root: Path):
        from bundle_factory import make_tiny_bundle

        from edgetl.keys import generate_keypair

        self.root = root
        self.key, self.pub = generate_keypair(root / "release")
        self.other_key, self.other_pub = generate_keypair(root / "stranger")
        self.v1 = make_tiny_bundle(root / "make", key=self.key, out=root / "v1.edgetl")
        self.v2 = resign(self.v1, root / "v2.edgetl", self.key,
                         edit_manifest=lambda m: m.update(model_version=m["model_version"] + "-v2"))
        from edgetl.bundle import open_bundle

        with open_bundle(self.v1) as b:
            self.v1_version = b.manifest["model_version"]
        self.v2_version = self.v1_version + "-v2"
        self.data = root / "make" / "data"

    def image(self, cls: str = "good", index: int = 0) -> Path:
        return self.data / "val" / cls / f"{index:03d}.png"

    def jpeg(self, cls: str = "good", index: int = 0) -> bytes:
        import cv2

        ok, buf = cv2.imencode(".jpg", cv2.imread(str(self.image(cls, index))))
        return buf.tobytes()


def bundles(tmp_path_factory) -> Bundles:
    if "b" not in _BUNDLES:
        _BUNDLES["b"] = Bundles(tmp_path_factory.mktemp("bundles"))
    return _BUNDLES["b"]


class StrictRuntime:
    """Wraps a runtime so that using it after close() fails, as OpenVINO and TensorRT do: each call
    takes ``delay_s`` and checks, at its end, that the runtime was not closed meanwhile (the ONNX
    Runtime test model's close() does nothing, so it cannot show a runtime closed under a request)."""

    def __init__(self, runtime, delay_s: float = 0.01):
        self._runtime, self.closed, self.delay_s = runtime, False, delay_s

    def predict(self, batch):
        out = self._runtime.predict(batch)
        time.sleep(self.delay_s)
        if self.closed:
            raise RuntimeError("runtime used after close()")
        return out

    def predict_outputs(self, batch):
        return {"output": self.predict(batch)}

    def info(self):
        return self._runtime.info()

    def close(self):
        self.closed = True
        self._runtime.close()
