"""Hostile inputs for the agent, built small and streamed: zip bombs, many-member zips, image bombs.

Shared by the fault suite (tests/test_agent_hostile.py) and benchmarks/agent_attacks.py, which
measures the agent's peak memory under each of them.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
import zlib
from pathlib import Path

ZEROS = b"\0" * (1 << 20)


def _deflated(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def _sign_raw(raw: bytes, key_path: Path | None) -> bytes | None:
    if key_path is None:
        return None
    from edgetl.keys import load_private_key, sign

    return json.dumps(sign(raw, load_private_key(key_path))).encode()


def zip_bomb(src: Path, dst: Path, key_path: Path | None, member_mib: int,
             name: str = "model/bomb.bin") -> Path:
    """A copy of bundle ``src`` plus one listed, correctly hashed member of ``member_mib`` MiB of zeros
    (about 1 KiB compressed per MiB), signed by ``key_path``: only the size caps can stop it."""
    from edgetl.bundle import manifest_bytes, open_bundle

    digest = hashlib.sha256()
    for _ in range(member_mib):
        digest.update(ZEROS)
    with open_bundle(src) as bundle:
        manifest = json.loads(bundle.manifest_bytes)
        members = {n: bundle.read(n) for n in bundle.names if n not in ("manifest.json", "signature")}
    manifest["files"][name] = digest.hexdigest()
    raw = manifest_bytes(manifest)
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", raw)
        for member, data in members.items():
            zf.writestr(member, data)
        with zf.open(_deflated(name), "w", force_zip64=True) as out:
            for _ in range(member_mib):
                out.write(ZEROS)
        signature = _sign_raw(raw, key_path)
        if signature is not None:
            zf.writestr("signature", signature)
    return dst


def reserved_member_bomb(dst: Path, member: str, mib: int) -> Path:
    """A zip whose ``manifest.json`` or ``signature`` inflates to ``mib`` MiB (no key needed)."""
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        if member != "manifest.json":
            zf.writestr("manifest.json", b"{}")
        with zf.open(_deflated(member), "w", force_zip64=True) as out:
            out.write(b'{"x": "')
            for _ in range(mib):
                out.write(b"a" * (1 << 20))
            out.write(b'"}')
    return dst


def many_members(dst: Path, n: int) -> Path:
    """A zip of ``n`` empty members (plus a manifest): tests the duplicate and member-count checks."""
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("manifest.json", b"{}")
        for i in range(n):
            zf.writestr(f"model/m{i}", b"")
    return dst


def png_bomb(width: int, height: int, rows: int | None = None) -> bytes:
    """A greyscale PNG of ``width`` x ``height`` black pixels, streamed through zlib (a few hundred KiB
    for 20000 x 20000; OpenCV would decode it to width * height * 3 bytes). ``rows`` encodes only
    that many rows (a truncated image: only its header matters)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(6)
    row = b"\0" * (width + 1)  # filter byte + pixels
    parts = [comp.compress(row) for _ in range(height if rows is None else rows)]
    idat = b"".join(parts) + comp.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_with_tail(jpeg: bytes, tail_mib: int) -> bytes:
    """A valid JPEG followed by ``tail_mib`` MiB of junk (decoders stop at the end marker)."""
    return jpeg + ZEROS * tail_mib


def png_inflate_bomb(mib: int) -> bytes:
    """A 1x1 greyscale PNG whose image data inflates to ``mib`` MiB (about 1 KiB compressed per MiB):
    libpng inflates all of it; the pixel needs 2 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(ZEROS) for _ in range(mib)) + comp.flush()
    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def many_scans_jpeg(image_bgr, scans: int, max_bytes: int | None = None) -> bytes:
    """A progressive JPEG of ``image_bgr`` whose last scan is repeated until it has ``scans`` scans
    (each scan makes the decoder pass over the whole image again), fewer if that would pass ``max_bytes``."""
    import cv2

    ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    data = buf.tobytes()
    starts = [i for i in range(len(data) - 1) if data[i:i + 2] == b"\xff\xda"] + [len(data) - 2]
    # the shortest scan (its SOS segment and entropy-coded data), repeated before EOI
    scan = min((data[a:b] for a, b in zip(starts, starts[1:], strict=False)), key=len)
    have = data.count(b"\xff\xda")
    if max_bytes is not None:
        scans = min(scans, have + max(0, max_bytes - len(data)) // max(1, len(scan)))
    return data[:-2] + scan * max(0, scans - have) + b"\xff\xd9"


def lying_directory_zip(dst: Path, entries: int, name_len: int = 200) -> Path:
    """A zip of ``entries`` empty members with long names whose end-of-central-directory record
    claims one entry: only the directory's size (from the same record) gives it away."""
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("manifest.json", b"{}")
        for i in range(entries):
            zf.writestr(f"model/{i:08d}".ljust(name_len, "x"), b"")
    data = bytearray(dst.read_bytes())
    at = data.rfind(b"PK\x05\x06")
    data[at + 8:at + 12] = struct.pack("<HH", 1, 1)  # entries on this disk, entries in all
    dst.write_bytes(bytes(data))
    return dst
