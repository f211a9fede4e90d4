"""Ed25519 signing keys and detached signatures over exact bytes (no torch).

A bundle is signed over the exact bytes of its ``manifest.json``; the manifest
carries the SHA-256 of every other member, so one signature covers the whole
bundle. ``key_id`` is the SHA-256 fingerprint of the raw 32-byte public key, so
a device can say *which* key signed what it runs.

Keys on disk: ``NAME.key`` (PEM, PKCS#8, unencrypted, mode 0600) and
``NAME.pub`` (PEM, SubjectPublicKeyInfo). ``cryptography`` does the maths.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgetl.errors import EdgetlError, SignatureError

ALG = "ed25519"


def _paths(name: str | Path) -> tuple[Path, Path]:
    base = Path(name)
    if base.suffix in (".key", ".pub"):
        base = base.with_suffix("")
    return base.with_name(base.name + ".key"), base.with_name(base.name + ".pub")


def generate_keypair(name: str | Path, force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (0600) and ``NAME.pub``; ``NAME`` may be a path.

    Raises:
        EdgetlError: either file exists and ``force`` is false (a lost signing
            key cannot be regenerated, so never overwrite silently).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key_path, pub_path = _paths(name)
    if not force:
        for path in (key_path, pub_path):
            if path.exists():
                raise EdgetlError(f"{path}: already exists; pass --force to overwrite it")
    key_path.parent.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    pub = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    tmp = key_path.with_name(key_path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(tmp, 0o600)
    tmp.replace(key_path)
    pub_path.write_bytes(pub)
    return key_path, pub_path


def _read(path: str | Path, what: str) -> bytes:
    path = Path(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise EdgetlError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None


def load_private_key(path: str | Path) -> Any:
    """An ``Ed25519PrivateKey`` from a PEM PKCS#8 file; errors name the file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read(path, "private key")
    if b"-----BEGIN PUBLIC KEY-----" in data:  # the .pub handed where the .key belongs
        raise EdgetlError(f"{path}: that is the public key; sign with the private key "
                          f"{Path(path).with_suffix('.key')} (edgetl keys generate writes both)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise EdgetlError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise EdgetlError(f"{path}: expected an Ed25519 private key, got {type(key).__name__}")
    return key


def load_public_key(path: str | Path) -> Any:
    """An ``Ed25519PublicKey`` from a PEM file; errors name the file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = _read(path, "public key")
    if b"PRIVATE KEY-----" in data:  # never hand the private key to a device
        raise EdgetlError(f"{path}: that is the private key; trust the public key {Path(path).with_suffix('.pub')}")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise EdgetlError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise EdgetlError(f"{path}: expected an Ed25519 public key, got {type(key).__name__}")
    return key


def key_id(public_key: Any) -> str:
    """Hex SHA-256 of the raw 32-byte public key (accepts a private key too)."""
    from cryptography.hazmat.primitives import serialization

    if hasattr(public_key, "public_key"):
        public_key = public_key.public_key()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def sign(data: bytes, private_key: Any) -> dict[str, str]:
    """``{"alg": "ed25519", "key_id": …, "sig": base64}`` over exactly ``data``."""
    return {"alg": ALG, "key_id": key_id(private_key),
            "sig": base64.b64encode(private_key.sign(data)).decode("ascii")}


def verify_signature(data: bytes, signature: dict[str, Any], trusted_public_keys: Iterable[Any]) -> str:
    """Check ``signature`` over ``data`` against the trusted keys; return the signer's key id.

    ``trusted_public_keys`` holds key objects or paths to ``.pub`` files.

    Raises:
        SignatureError: malformed signature, unknown algorithm, a key id that no
            trusted key has, or a signature that does not match.
    """
    from cryptography.exceptions import InvalidSignature

    if not isinstance(signature, dict):
        raise SignatureError("signature: expected a JSON object {alg, key_id, sig}")
    if signature.get("alg") != ALG:
        raise SignatureError(f"signature: algorithm {signature.get('alg')!r} is not supported (expected '{ALG}')")
    keys = [load_public_key(k) if isinstance(k, (str, Path)) else k for k in trusted_public_keys]
    by_id = {key_id(k): k for k in keys}
    kid = signature.get("key_id")
    if kid not in by_id:
        known = ", ".join(k[:16] for k in by_id) or "none"
        raise SignatureError(f"signed by key {str(kid)[:16]}…, which is not trusted here (trusted: {known})")
    try:
        raw = base64.b64decode(str(signature.get("sig", "")), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("signature: 'sig' is not valid base64") from None
    try:
        by_id[kid].verify(raw, data)
    except InvalidSignature:
        raise SignatureError(f"signature by key {kid[:16]}… does not match the manifest "
                             "(the manifest was changed after signing)") from None
    return kid
