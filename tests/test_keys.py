"""Ed25519 keys: files, modes, refusal to overwrite, signatures."""

from __future__ import annotations

import json
import stat

import pytest
from click.testing import CliRunner

from edgetl.cli import cli
from edgetl.errors import EdgetlError, SignatureError
from edgetl.keys import generate_keypair, key_id, load_private_key, load_public_key, sign, verify_signature


def test_generate_writes_pem_pair_private_mode_0600_and_name_may_be_a_path(tmp_path):
    key, pub = generate_keypair(tmp_path / "keys" / "line1")
    assert key.name == "line1.key" and pub.name == "line1.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert key_id(load_private_key(key)) == key_id(load_public_key(pub))
    assert len(key_id(load_public_key(pub))) == 64


def test_generate_refuses_to_overwrite_without_force(tmp_path):
    key, _ = generate_keypair(tmp_path / "k")
    before = key.read_bytes()
    with pytest.raises(EdgetlError, match="already exists; pass --force"):
        generate_keypair(tmp_path / "k")
    assert key.read_bytes() == before
    generate_keypair(tmp_path / "k", force=True)
    assert key.read_bytes() != before


def test_signature_round_trip_and_rejections(tmp_path):
    key, pub = generate_keypair(tmp_path / "a")
    _, other_pub = generate_keypair(tmp_path / "b")
    sig = sign(b"manifest bytes", load_private_key(key))
    assert sig["alg"] == "ed25519"
    assert verify_signature(b"manifest bytes", sig, [other_pub, pub]) == sig["key_id"]
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(b"manifest bytes!", sig, [pub])
    with pytest.raises(SignatureError, match="not trusted"):
        verify_signature(b"manifest bytes", sig, [other_pub])
    with pytest.raises(SignatureError, match="algorithm"):
        verify_signature(b"manifest bytes", {**sig, "alg": "rsa"}, [pub])


def test_loading_a_non_key_file_is_a_one_line_error_naming_it(tmp_path):
    bad = tmp_path / "bad.pub"
    bad.write_text("hello")
    with pytest.raises(EdgetlError, match="bad.pub: not a PEM public key"):
        load_public_key(bad)


def test_cli_keys_generate_and_refuse_overwrite(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["keys", "generate", str(tmp_path / "demo"), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["key_id"] == key_id(load_public_key(tmp_path / "demo.pub"))
    again = runner.invoke(cli, ["keys", "generate", str(tmp_path / "demo")])
    assert again.exit_code == 1 and "already exists" in again.output
    assert runner.invoke(cli, ["keys", "generate", str(tmp_path / "demo"), "--force"]).exit_code == 0
