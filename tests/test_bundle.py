"""Bundle format: write/open/verify/extract, and every way a bundle is refused."""

from __future__ import annotations

import json
import stat
import zipfile

import pytest
from bundle_factory import minimal_manifest
from click.testing import CliRunner

from edgetl.bundle import extract_bundle, open_bundle, verify_bundle, write_bundle
from edgetl.cli import cli
from edgetl.errors import BundleError, SignatureError, SignatureNotCheckedError
from edgetl.keys import generate_keypair, load_private_key

MEMBERS = {"model/model.onnx": b"\x08\x01fake-onnx", "reference/outputs.json": b'{"images": []}'}


@pytest.fixture()
def keys(tmp_path):
    key, pub = generate_keypair(tmp_path / "signer")
    _, other = generate_keypair(tmp_path / "other")
    return load_private_key(key), pub, other


@pytest.fixture()
def bundle(tmp_path, keys):
    return write_bundle(tmp_path / "b.edgetl", minimal_manifest(), MEMBERS, private_key=keys[0])


def _rewrite(src, dst, change):
    """Copy a zip member by member, letting ``change(name, data)`` alter (or drop: None) members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)
    return dst


def test_write_fills_hashes_signs_and_verifies_with_the_trusted_key(bundle, keys):
    opened = open_bundle(bundle)
    assert set(opened.manifest["files"]) == set(MEMBERS)
    assert opened.signature["alg"] == "ed25519"
    assert opened.read("model/model.onnx") == MEMBERS["model/model.onnx"]
    report = verify_bundle(bundle, [keys[1]])
    assert report["signature"]["checked"] and report["hashes"] == "ok" and report["members"] == 2


def test_tampered_member_is_rejected_naming_it(bundle, keys, tmp_path):
    bad = _rewrite(bundle, tmp_path / "t.edgetl",
                   lambda n, d: b"evil" if n == "model/model.onnx" else d)
    with pytest.raises(BundleError, match="model/model.onnx.*does not match its SHA-256"):
        verify_bundle(bad, [keys[1]])


def test_tampered_manifest_breaks_the_signature(bundle, keys, tmp_path):
    def change(name, data):
        if name == "manifest.json":
            doc = json.loads(data)
            doc["threshold"] = 0.01
            return json.dumps(doc).encode()
        return data

    with pytest.raises(SignatureError, match="does not match the manifest"):
        verify_bundle(_rewrite(bundle, tmp_path / "t.edgetl", change), [keys[1]])


def test_wrong_key_is_rejected(bundle, keys):
    with pytest.raises(SignatureError, match="not trusted"):
        verify_bundle(bundle, [keys[2]])


def test_unsigned_bundle_is_rejected_when_keys_are_given(tmp_path, keys):
    path = write_bundle(tmp_path / "u.edgetl", minimal_manifest(), MEMBERS)
    with pytest.raises(SignatureError, match="not signed"):
        verify_bundle(path, [keys[1]])


def test_missing_member_is_rejected(bundle, keys, tmp_path):
    bad = _rewrite(bundle, tmp_path / "m.edgetl",
                   lambda n, d: None if n == "reference/outputs.json" else d)
    with pytest.raises(BundleError, match="reference/outputs.json.*missing"):
        verify_bundle(bad, [keys[1]])


def test_unlisted_member_is_rejected(bundle, keys, tmp_path):
    with zipfile.ZipFile(bundle, "a") as zf:
        zf.writestr("model/extra.bin", b"x")
    with pytest.raises(BundleError, match="model/extra.bin.*not listed"):
        verify_bundle(bundle, [keys[1]])


def test_bad_schema_is_rejected_naming_the_field(tmp_path, keys):
    with pytest.raises(BundleError, match="task"):
        write_bundle(tmp_path / "s.edgetl", minimal_manifest(task="segment"), MEMBERS, keys[0])
    assert not (tmp_path / "s.edgetl").exists()
    # a signed bundle whose (signed) manifest lacks a required field: signature ok, schema not
    good = write_bundle(tmp_path / "g.edgetl", minimal_manifest(), MEMBERS)
    from edgetl.bundle import manifest_bytes
    from edgetl.keys import sign

    def change(name, data):
        if name == "manifest.json":
            doc = json.loads(data)
            del doc["labels"]
            raw = manifest_bytes(doc)
            change.raw = raw
            return raw
        return data

    bad = _rewrite(good, tmp_path / "b.edgetl", change)
    with zipfile.ZipFile(bad, "a") as zf:
        zf.writestr("signature", json.dumps(sign(change.raw, keys[0])))
    with pytest.raises(BundleError, match="labels: Field required"):
        verify_bundle(bad, [keys[1]])


def test_no_trusted_key_checks_the_rest_then_says_signature_not_checked(bundle):
    with pytest.raises(SignatureNotCheckedError, match="signature not checked") as info:
        verify_bundle(bundle, None)
    assert info.value.exit_code == 3 and info.value.report["hashes"] == "ok"


def test_not_a_bundle(tmp_path):
    junk = tmp_path / "x.edgetl"
    junk.write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="not an edgetl bundle"):
        open_bundle(junk)


@pytest.mark.parametrize("name", ["../evil", "/abs/path", "model/../../x", "model\\..\\x"])
def test_extract_refuses_path_escape(tmp_path, name):
    path = tmp_path / "e.edgetl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("manifest.json", "{}")
        zf.writestr(name, b"x")
    with pytest.raises(BundleError, match="unsafe path"):
        extract_bundle(path, tmp_path / "out", max_bytes=1 << 20)
    assert not (tmp_path / "evil").exists()


def test_extract_refuses_symlinks_devices_and_oversize(tmp_path, bundle):
    for mode, what in ((stat.S_IFLNK | 0o777, "symbolic link"), (stat.S_IFCHR | 0o600, "device")):
        path = tmp_path / f"l{mode}.edgetl"
        with zipfile.ZipFile(path, "w") as zf:
            info = zipfile.ZipInfo("model/link")
            info.external_attr = mode << 16
            zf.writestr(info, "/etc/passwd")
        with pytest.raises(BundleError, match=what):
            extract_bundle(path, tmp_path / "out", max_bytes=1 << 20)
    with pytest.raises(BundleError, match="exceeds the limit"):
        extract_bundle(bundle, tmp_path / "out2", max_bytes=10)
    out = extract_bundle(bundle, tmp_path / "ok", max_bytes=1 << 20)
    assert (out / "model" / "model.onnx").read_bytes() == MEMBERS["model/model.onnx"]


def test_write_is_atomic_a_failure_leaves_no_file_and_keeps_the_old_one(tmp_path, keys, monkeypatch):
    dest = tmp_path / "a.edgetl"
    write_bundle(dest, minimal_manifest(), MEMBERS, keys[0])
    before = dest.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_bundle(dest, minimal_manifest(name="other"), MEMBERS, keys[0])
    monkeypatch.undo()
    assert dest.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []
    with pytest.raises(RuntimeError):
        monkeypatch.setattr(zipfile.ZipFile, "writestr", boom)
        write_bundle(tmp_path / "new.edgetl", minimal_manifest(), MEMBERS, keys[0])
    assert not (tmp_path / "new.edgetl").exists()


def test_cli_verify_exit_codes_and_inspect(bundle, keys, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(cli, ["bundle", "verify", str(bundle), "--trust", str(keys[1]),
                             "--no-reference", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["signature"]["checked"] is True
    unchecked = runner.invoke(cli, ["bundle", "verify", str(bundle), "--no-reference"])
    assert unchecked.exit_code == 3 and "signature not checked" in unchecked.output
    wrong = runner.invoke(cli, ["bundle", "verify", str(bundle), "--trust", str(keys[2])])
    assert wrong.exit_code == 1 and "not trusted" in wrong.output
    assert wrong.output.count("\n") == 1
    shown = runner.invoke(cli, ["bundle", "inspect", str(bundle), "--json"])
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.stdout)
    assert doc["name"] == "tiny" and doc["signature"]["signed"]
    assert {m["name"] for m in doc["members"]} == set(MEMBERS)


def test_manifest_schema_file_is_generated_from_the_model_and_validates_a_manifest():
    from pathlib import Path

    import jsonschema

    from edgetl.manifest import json_schema

    path = Path(__file__).resolve().parent.parent / "docs" / "schemas" / "manifest.schema.json"
    on_disk = json.loads(path.read_text())
    assert on_disk == json.loads(json.dumps(json_schema())), "regenerate: python -m edgetl.manifest"
    doc = minimal_manifest(files={"model/model.onnx": "0" * 64})
    jsonschema.validate(doc, on_disk)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**doc, "output": "logits"}, on_disk)


def test_cli_json_documents_match_their_schemas(bundle, keys):
    from pathlib import Path

    import jsonschema

    schemas = Path(__file__).resolve().parent.parent / "docs" / "schemas"
    runner = CliRunner()
    verify = runner.invoke(cli, ["bundle", "verify", str(bundle), "--trust", str(keys[1]), "--no-reference", "--json"])
    jsonschema.validate(json.loads(verify.stdout), json.loads((schemas / "bundle-verify.schema.json").read_text()))
    inspect = runner.invoke(cli, ["bundle", "inspect", str(bundle), "--json"])
    jsonschema.validate(json.loads(inspect.stdout), json.loads((schemas / "bundle-inspect.schema.json").read_text()))


def test_device_side_modules_import_without_torch():
    import subprocess
    import sys

    code = ("import sys\n"
            "for name in ('torch', 'timm', 'torchvision'):\n"
            "    sys.modules[name] = None  # any import of them now raises ImportError\n"
            "import edgetl.bundle, edgetl.keys, edgetl.reference, edgetl.manifest\n"
            "from edgetl.plugins import get_manager\n"
            "get_manager()\n"
            "assert sys.modules['torch'] is None and not any(k.startswith('torch.') for k in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
