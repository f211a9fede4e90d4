"""Write, open, verify and safely extract a bundle (``NAME.edgetl``; no torch).

A bundle is a zip with fixed members: ``manifest.json``, ``model/…``,
``reference/…`` and, when signed, ``signature``. The manifest lists the
SHA-256 of every other member and the signature covers the manifest's exact
bytes, so checking the signature, then the hashes, checks everything.

Writing is atomic (a temp file in the destination folder, then ``rename``):
a failed export leaves no bundle behind. Extraction refuses absolute paths,
``..``, links, device files and archives over a size cap, because a bundle is
untrusted input until verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from edgetl.errors import BundleError, MissingDependencyError, SignatureError, SignatureNotCheckedError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgetl.manifest import Manifest

MANIFEST = "manifest.json"
SIGNATURE = "signature"
RESERVED = (MANIFEST, SIGNATURE)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The canonical serialisation that is written and signed (sorted keys, UTF-8)."""
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _check_member_name(name: str) -> None:
    path = PurePosixPath(name)
    if (not name or name.startswith("/") or "\\" in name or ":" in name.split("/")[0]
            or any(part in ("", ".", "..") for part in name.rstrip("/").split("/"))
            or path.is_absolute()):
        raise BundleError(f"bundle member {name!r}: unsafe path (absolute, '..', or empty part)")


def write_bundle(out_path: str | Path, manifest: dict[str, Any], members: dict[str, bytes | Path],
                 private_key: Any = None) -> Path:
    """Write ``members`` and ``manifest`` (with its ``files`` hashes filled) into a zip, atomically.

    Args:
        out_path: the ``.edgetl`` file to create (replaced if it exists).
        manifest: the manifest document; ``files`` is overwritten here.
        members: member name (``model/…`` or ``reference/…``) -> bytes or a file path.
        private_key: an Ed25519 private key; ``None`` writes an unsigned bundle.

    Returns:
        ``out_path``.
    """
    from edgetl.keys import sign
    from edgetl.manifest import validate_manifest

    out_path = Path(out_path)
    data: dict[str, bytes] = {}
    for name, value in members.items():
        if name in RESERVED:
            raise BundleError(f"bundle member {name!r} is reserved")
        _check_member_name(name)
        data[name] = Path(value).read_bytes() if isinstance(value, (str, Path)) else bytes(value)
    manifest = dict(manifest)
    manifest["files"] = {name: sha256_bytes(blob) for name, blob in sorted(data.items())}
    validate_manifest(manifest, source=f"{out_path.name}: {MANIFEST}")
    raw_manifest = manifest_bytes(manifest)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST, raw_manifest)
            for name in sorted(data):
                zf.writestr(name, data[name])
            if private_key is not None:
                zf.writestr(SIGNATURE, json.dumps(sign(raw_manifest, private_key), indent=2) + "\n")
        os.chmod(tmp, 0o644)
        tmp.replace(out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_path


@dataclass
class Bundle:
    """An opened bundle; nothing is trusted until :func:`verify_bundle` passed."""

    path: Path
    manifest: dict[str, Any]
    manifest_bytes: bytes
    signature: dict[str, Any] | None
    names: list[str]
    _zip: zipfile.ZipFile

    def read(self, name: str) -> bytes:
        if name not in self.names:
            raise BundleError(f"{self.path}: member {name!r} is missing")
        return self._zip.read(name)

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_bundle(path: str | Path) -> Bundle:
    """Open a bundle and parse its manifest and signature (no verification).

    Raises:
        BundleError: not a file, not a zip, duplicate members, or a missing or
            unparsable ``manifest.json`` / ``signature``.
    """
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: no such bundle file")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError(f"{path}: not an edgetl bundle (not a zip archive: {exc})") from None
    names = [info.filename for info in zf.infolist()]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        zf.close()
        raise BundleError(f"{path}: duplicate members {dupes} (a bundle has each member once)")
    if MANIFEST not in names:
        zf.close()
        raise BundleError(f"{path}: not an edgetl bundle (no {MANIFEST})")
    raw = zf.read(MANIFEST)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        zf.close()
        raise BundleError(f"{path}: {MANIFEST} is not valid JSON ({exc})") from None
    signature = None
    if SIGNATURE in names:
        try:
            signature = json.loads(zf.read(SIGNATURE).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            zf.close()
            raise SignatureError(f"{path}: {SIGNATURE} is not valid JSON") from None
    return Bundle(path=path, manifest=manifest, manifest_bytes=raw, signature=signature,
                  names=names, _zip=zf)


def _load_trusted(trusted: Iterable[Any] | None) -> list[Any]:
    from edgetl.keys import load_public_key

    return [load_public_key(k) if isinstance(k, (str, Path)) else k for k in (trusted or [])]


def verify_bundle(path: str | Path, trusted: Iterable[Any] | None) -> dict[str, Any]:
    """Check signature (when keys are given), schema and every member's hash.

    Order: signature first (so nothing from an untrusted source is parsed
    further), then schema, then hashes and the set of members.

    Returns:
        ``{"path", "name", "model_version", "target", "precision", "schema": "ok",
        "hashes": "ok", "members", "signature": {"signed", "checked", "key_id"}}``.

    Raises:
        SignatureError: unsigned when keys are given, untrusted key, bad signature.
        BundleError: schema, hash or member problems.
        SignatureNotCheckedError: everything passed but no trusted key was given
            (exit status 3); its ``report`` attribute holds the report.
    """
    from edgetl.keys import verify_signature
    from edgetl.manifest import validate_manifest

    keys = _load_trusted(trusted)
    with open_bundle(path) as bundle:
        sig_report = {"signed": bundle.signature is not None, "checked": False,
                      "key_id": (bundle.signature or {}).get("key_id")}
        if keys:
            if bundle.signature is None:
                raise SignatureError(f"{bundle.path}: the bundle is not signed (no '{SIGNATURE}' member)")
            sig_report["key_id"] = verify_signature(bundle.manifest_bytes, bundle.signature, keys)
            sig_report["checked"] = True
        doc = validate_manifest(bundle.manifest, source=f"{bundle.path.name}: {MANIFEST}")
        listed = dict(doc.files)
        present = [n for n in bundle.names if n not in RESERVED and not n.endswith("/")]
        for name in present:
            _check_member_name(name)
            if name not in listed:
                raise BundleError(f"{bundle.path}: member {name!r} is not listed in the manifest")
        for name, digest in listed.items():
            if name not in bundle.names:
                raise BundleError(f"{bundle.path}: member {name!r} listed in the manifest is missing")
            if sha256_bytes(bundle.read(name)) != digest:
                raise BundleError(f"{bundle.path}: member {name!r} does not match its SHA-256 in the "
                                  "manifest (modified after export)")
        for name in doc.target.files:
            if name not in listed:
                raise BundleError(f"{bundle.path}: target file {name!r} is not a bundle member")
        report = {"path": str(bundle.path), "name": doc.name, "model_version": doc.model_version,
                  "target": doc.target.format, "precision": doc.target.precision,
                  "schema": "ok", "hashes": "ok", "members": len(listed), "signature": sig_report}
    if not keys:
        exc = SignatureNotCheckedError(f"{path}: schema and hashes ok, but signature not checked "
                                       "(no --trust key given)")
        exc.report = report
        raise exc
    return report


def extract_bundle(path: str | Path, dest: str | Path, max_bytes: int) -> Path:
    """Extract a bundle into ``dest`` after checking every entry; return ``dest``.

    Raises:
        BundleError: an absolute or ``..`` path, a symlink or device/FIFO entry,
            or more than ``max_bytes`` uncompressed (declared or actual).
    """
    dest = Path(dest)
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError(f"{path}: not an edgetl bundle (not a zip archive: {exc})") from None
    with zf:
        infos = zf.infolist()
        total = 0
        for info in infos:
            _check_member_name(info.filename)
            mode = info.external_attr >> 16
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no type recorded
                kind = "a symbolic link" if stat.S_ISLNK(mode) else "a device or special file"
                raise BundleError(f"{path}: member {info.filename!r} is {kind}; refused")
            total += info.file_size
            if total > max_bytes:
                raise BundleError(f"{path}: uncompressed size exceeds the limit of {max_bytes} bytes")
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        written = 0
        for info in infos:
            target = (dest / info.filename).resolve()
            if root != target and root not in target.parents:
                raise BundleError(f"{path}: member {info.filename!r} escapes the destination")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > max_bytes:
                        raise BundleError(f"{path}: uncompressed size exceeds the limit of {max_bytes} bytes")
                    out.write(chunk)
    return dest


def load_runtime(extracted_dir: str | Path, manifest: "Manifest | dict[str, Any]",
                 options: dict[str, Any] | None = None):
    """Load an extracted bundle's model through its target plugin's ``load`` (no torch).

    Args:
        extracted_dir: where :func:`extract_bundle` put the members.
        manifest: the bundle's manifest; a dict is validated into a
            :class:`edgetl.manifest.Manifest`, which is what the target receives.
        options: runtime settings overriding ``manifest.target.runtime``
            (``threads``, ``device``, ``providers``, ``progress``, …; see docs/plugins.md).

    Raises:
        UnknownComponentError: the target plugin is not installed here.
        MissingDependencyError: its runtime library is missing (names the extra).
    """
    from edgetl.manifest import as_manifest
    from edgetl.plugins import get_manager

    manifest = as_manifest(manifest)
    target = get_manager().get("target", manifest.target.format)
    missing = target.missing_modules()
    if missing:
        raise MissingDependencyError(missing[0], target.extra, f"target '{target.name}'")
    files = [Path(extracted_dir) / name for name in manifest.target.files]
    for file in files:
        if not file.exists():
            raise BundleError(f"{file}: model file missing from the extracted bundle")
    return target.load(files, manifest, options or {})
