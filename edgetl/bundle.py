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
from collections.abc import Callable, Iterable
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


MAX_MANIFEST_BYTES = 1024 * 1024  # a manifest is a few KiB; more is not a bundle edgetl wrote
MAX_SIGNATURE_BYTES = 64 * 1024
DEFAULT_MAX_MEMBERS = 10_000
DEFAULT_MAX_BYTES = 4 * 1024 ** 3  # unpacked size when the caller gives no cap (host-side verify)
CHUNK = 1 << 20


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

    def chunks(self, name: str, limit: int | None = None):
        """Yield member ``name`` in 1 MiB chunks; BundleError past ``limit`` bytes (a zip bomb)."""
        if name not in self.names:
            raise BundleError(f"{self.path}: member {name!r} is missing")
        seen = 0
        with self._zip.open(name) as src:
            while chunk := src.read(CHUNK):
                seen += len(chunk)
                if limit is not None and seen > limit:
                    raise BundleError(f"{self.path}: member {name!r} unpacks to more than {limit} bytes")
                yield chunk

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def check_directory(path: Path, infos: list[zipfile.ZipInfo], max_bytes: int, max_members: int) -> None:
    """Refuse a zip from its directory alone, before any member is read: too many members,
    duplicates, or more declared uncompressed bytes than ``max_bytes``."""
    if len(infos) > max_members:
        raise BundleError(f"{path}: {len(infos)} members, more than the limit of {max_members} (--max-members)")
    seen: set[str] = set()
    dupes: set[str] = set()
    total = 0
    for info in infos:
        (dupes if info.filename in seen else seen).add(info.filename)
        total += info.file_size
    if dupes:
        raise BundleError(f"{path}: duplicate members {sorted(dupes)[:5]} (a bundle has each member once)")
    if total > max_bytes:
        raise BundleError(f"{path}: uncompressed size {total} bytes exceeds the limit of {max_bytes} bytes")


# a central-directory entry is 46 bytes plus its name and extra fields; a bundle's names are short, so
# more directory than this per allowed member (plus 64 KiB of slack) can only be a directory bomb
DIRECTORY_BYTES_PER_MEMBER = 46 + 256
_EOCD, _EOCD64, _LOCATOR = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"


def check_zip_tail(path: Path, max_members: int) -> None:
    """Refuse a zip from its end-of-central-directory record alone, before the directory is parsed.

    ``zipfile.ZipFile`` reads and parses the whole central directory (a Python object per entry)
    before anything can count its entries: a 500 MiB directory of tiny entries took 4 GB. The
    EOCD record (and its zip64 twin) says how many entries and how many directory bytes there
    are; both are checked against ``max_members`` here, reading only the file's last 64 KiB.
    """
    import struct

    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            tail_at = max(0, size - (22 + 65535 + 20))
            f.seek(tail_at)
            tail = f.read()
            at = tail.rfind(_EOCD)
            if at < 0 or at + 22 > len(tail):
                return  # not a zip: zipfile says so
            entries, cd_size = struct.unpack("<HI", tail[at + 10:at + 16])
            locator = tail[at - 20:at] if at >= 20 else b""
            if locator[:4] == _LOCATOR:
                offset = struct.unpack("<Q", locator[8:16])[0]
                if 0 <= offset <= size - 56:
                    f.seek(offset)
                    record = f.read(56)
                    if record[:4] == _EOCD64:
                        entries = max(entries, struct.unpack("<Q", record[32:40])[0])
                        cd_size = max(cd_size, struct.unpack("<Q", record[40:48])[0])
    except OSError:
        return  # unreadable: zipfile says so
    if entries > max_members:
        raise BundleError(f"{path}: {entries} members, more than the limit of {max_members} (--max-members)")
    allowed = 64 * 1024 + max_members * DIRECTORY_BYTES_PER_MEMBER
    if cd_size > allowed:
        raise BundleError(f"{path}: a zip directory of {cd_size} bytes, more than the {allowed} that "
                          f"{max_members} members (--max-members) may take")


def _read_small(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, path: Path) -> bytes:
    if info.file_size > limit:
        raise BundleError(f"{path}: {info.filename} declares {info.file_size} bytes, more than the "
                          f"{limit} a bundle's {info.filename} may have")
    with zf.open(info) as src:
        data = src.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{path}: {info.filename} unpacks to more than {limit} bytes")
    return data


def open_bundle(path: str | Path, max_bytes: int | None = None, max_members: int | None = None) -> Bundle:
    """Open a bundle and parse its manifest and signature (no verification).

    The zip directory is checked first (:func:`check_directory`), and the manifest
    and signature are read with their own small caps, so a zip bomb costs no memory.

    Raises:
        BundleError: not a file, not a zip, too many or duplicate members, over the size cap, or a
            missing, oversized or unparsable ``manifest.json`` / ``signature``.
    """
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: no such bundle file")
    check_zip_tail(path, max_members or DEFAULT_MAX_MEMBERS)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BundleError(f"{path}: not an edgetl bundle (not a zip archive: {exc})") from None
    try:
        infos = zf.infolist()
        check_directory(path, infos, max_bytes or DEFAULT_MAX_BYTES, max_members or DEFAULT_MAX_MEMBERS)
        by_name = {info.filename: info for info in infos}
        if MANIFEST not in by_name:
            raise BundleError(f"{path}: not an edgetl bundle (no {MANIFEST})")
        raw = _read_small(zf, by_name[MANIFEST], MAX_MANIFEST_BYTES, path)
        try:
            manifest = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{path}: {MANIFEST} is not valid JSON ({exc})") from None
        signature = None
        if SIGNATURE in by_name:
            try:
                signature = json.loads(_read_small(zf, by_name[SIGNATURE], MAX_SIGNATURE_BYTES, path).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise SignatureError(f"{path}: {SIGNATURE} is not valid JSON") from None
    except BaseException:
        zf.close()
        raise
    return Bundle(path=path, manifest=manifest, manifest_bytes=raw, signature=signature,
                  names=list(by_name), _zip=zf)


def _load_trusted(trusted: Iterable[Any] | None) -> list[Any]:
    from edgetl.keys import load_public_key

    return [load_public_key(k) if isinstance(k, (str, Path)) else k for k in (trusted or [])]


def _check_members(bundle: Bundle, listed: dict[str, str], max_bytes: int) -> None:
    """Every present member is listed and safe; every listed member is present and hashes right
    (streamed: at most ``max_bytes`` unpacked in all, one chunk in memory)."""
    present = [n for n in bundle.names if n not in RESERVED and not n.endswith("/")]
    for name in present:
        _check_member_name(name)
        if name not in listed:
            raise BundleError(f"{bundle.path}: member {name!r} is not listed in the manifest")
    budget = max_bytes
    for name, digest in listed.items():
        if name not in bundle.names:
            raise BundleError(f"{bundle.path}: member {name!r} listed in the manifest is missing")
        hasher = hashlib.sha256()
        for chunk in bundle.chunks(name, budget):
            hasher.update(chunk)
            budget -= len(chunk)
        if hasher.hexdigest() != digest:
            raise BundleError(f"{bundle.path}: member {name!r} does not match its SHA-256 in the "
                              "manifest (modified after export)")


def verify_bundle(path: str | Path, trusted: Iterable[Any] | None, max_bytes: int | None = None,
                  max_members: int | None = None) -> dict[str, Any]:
    """Check signature (when keys are given), schema and every member's hash.

    Order: the zip directory against the caps, then the signature (so nothing from an
    untrusted source is parsed further), then schema, then hashes and the set of members.

    Args:
        max_bytes: cap on the unpacked size (default 4 GiB); max_members: on the member count.

    Returns:
        ``{"path", "name", "model_version", "bundle_version", "created", "target", "precision",
        "schema": "ok", "hashes": "ok", "members", "manifest_sha256",
        "signature": {"signed", "checked", "key_id"}}`` (``bundle_version`` and ``created`` as the
        validated manifest holds them: what the agent orders bundles by).

    Raises:
        SignatureError: unsigned when keys are given, untrusted key, bad signature.
        BundleError: directory, schema, hash or member problems.
        SignatureNotCheckedError: everything passed but no trusted key was given
            (exit status 3); its ``report`` attribute holds the report.
    """
    from edgetl.keys import verify_signature
    from edgetl.manifest import validate_manifest

    keys = _load_trusted(trusted)
    with open_bundle(path, max_bytes, max_members) as bundle:
        sig_report = {"signed": bundle.signature is not None, "checked": False,
                      "key_id": (bundle.signature or {}).get("key_id")}
        if keys:
            if bundle.signature is None:
                raise SignatureError(f"{bundle.path}: the bundle is not signed (no '{SIGNATURE}' member)")
            sig_report["key_id"] = verify_signature(bundle.manifest_bytes, bundle.signature, keys)
            sig_report["checked"] = True
        doc = validate_manifest(bundle.manifest, source=f"{bundle.path.name}: {MANIFEST}")
        listed = dict(doc.files)
        _check_members(bundle, listed, max_bytes or DEFAULT_MAX_BYTES)
        for name in doc.target.files:
            if name not in listed:
                raise BundleError(f"{bundle.path}: target file {name!r} is not a bundle member")
        report = {"path": str(bundle.path), "name": doc.name, "model_version": doc.model_version,
                  "bundle_version": doc.bundle_version, "created": doc.created, "target": doc.target.format, "precision": doc.target.precision,
                  "schema": "ok", "hashes": "ok", "members": len(listed),
                  "manifest_sha256": sha256_bytes(bundle.manifest_bytes), "signature": sig_report}
    if not keys:
        exc = SignatureNotCheckedError(f"{path}: schema and hashes ok, but signature not checked "
                                       "(no --trust key given)")
        exc.report = report
        raise exc
    return report


def _check_entry(path: Path, info: zipfile.ZipInfo) -> None:
    _check_member_name(info.filename)
    mode = info.external_attr >> 16
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no type recorded
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "a device or special file"
        raise BundleError(f"{path}: member {info.filename!r} is {kind}; refused")


def extract_bundle(path: str | Path, dest: str | Path, max_bytes: int, max_members: int | None = None,
                   on_write: Callable[[int], None] | None = None) -> Path:
    """Extract a bundle into ``dest`` after checking every entry; return ``dest``.

    The zip directory is checked first (member count, duplicates, declared size); then the
    bytes actually written are counted against ``max_bytes`` while they stream.
    ``on_write(total_bytes)`` is called before each chunk is written (the agent's fault injection).

    Raises:
        BundleError: an absolute or ``..`` path, a symlink or device/FIFO entry, too many
            members, or more than ``max_bytes`` uncompressed (declared or actual).
    """
    dest = Path(dest)
    path = Path(path)
    check_zip_tail(path, max_members or DEFAULT_MAX_MEMBERS)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BundleError(f"{path}: not an edgetl bundle (not a zip archive: {exc})") from None
    with zf:
        infos = zf.infolist()
        check_directory(path, infos, max_bytes, max_members or DEFAULT_MAX_MEMBERS)
        for info in infos:
            _check_entry(path, info)
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
                while chunk := src.read(CHUNK):
                    written += len(chunk)
                    if written > max_bytes:
                        raise BundleError(f"{path}: uncompressed size exceeds the limit of {max_bytes} bytes")
                    if on_write is not None:
                        on_write(written)
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
