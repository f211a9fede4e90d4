"""``edgetl bundle inspect|verify``: what a bundle holds, and whether to trust it."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgetl.cli.common import emit_json, info, json_option
from edgetl.errors import EdgetlError, SignatureNotCheckedError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgetl.manifest import Manifest

DEFAULT_MAX_MB = 2048


@click.group("bundle")
def bundle_group() -> None:
    """Inspect or verify a bundle (.edgetl)."""


def inspect_document(path: Path) -> dict:
    """The inspect JSON: manifest summary, members with sizes, signature facts.

    Inspect reads an *unverified* bundle and shows whatever its manifest holds,
    so it reads the raw document leniently instead of validating it.
    """
    from edgetl.bundle import RESERVED, open_bundle

    with open_bundle(path) as bundle:
        m = bundle.manifest
        sizes = {i.filename: i.file_size for i in bundle._zip.infolist()}
        target = m.get("target", {})
        chosen = [a for a in (m.get("export") or {}).get("attempts", []) if a.get("passed")]
        return {
            "path": str(path), "size_bytes": path.stat().st_size,
            "name": m.get("name"), "model_version": m.get("model_version"), "created": m.get("created"),
            "task": m.get("task"), "labels": m.get("labels"), "output": m.get("output"),
            "threshold": m.get("threshold"),
            "target": target.get("format"), "precision": target.get("precision"),
            "method": target.get("method"), "profile": target.get("profile"),
            "input": m.get("input"), "compat": m.get("compat"),
            "gate": chosen[-1] if chosen else None,
            "attempts": (m.get("export") or {}).get("attempts", []),
            "reference": m.get("reference"),
            "members": [{"name": n, "size_bytes": sizes[n]} for n in bundle.names if n not in RESERVED],
            "signature": {"signed": bundle.signature is not None,
                          "key_id": (bundle.signature or {}).get("key_id")},
        }


@bundle_group.command("inspect")
@click.argument("file", type=click.Path(path_type=Path))
@json_option
def inspect_cmd(file: Path, as_json: bool) -> None:
    """Show the manifest summary, gate attempts and members (no verification)."""
    doc = inspect_document(file)
    if as_json:
        emit_json(doc)
        return
    click.echo(f"{doc['name']}  version {doc['model_version']}  ({doc['size_bytes'] / 1e6:.2f} MB)")
    click.echo(f"  task {doc['task']}, labels {', '.join(doc['labels'] or [])}, output {doc['output']}")
    click.echo(f"  target {doc['target']} {doc['precision']} ({doc['method']}), profile {doc['profile'] or '-'}")
    inp = doc["input"] or {}
    click.echo(f"  input {inp.get('size')} {inp.get('color')} {inp.get('resize')}")
    for a in doc["attempts"]:
        mark = "pass" if a.get("passed") else "FAIL"
        extra = (f" drop {a['drop_points']:.2f} pt, agreement {a['agreement']:.3f}, n={a['n']}"
                 if a.get("agreement") is not None else "")
        click.echo(f"  gate {a['precision']}/{a['method']}: {mark}{extra}" + (f" ({a['reason']})" if a.get("reason") else ""))
    for mem in doc["members"]:
        click.echo(f"  {mem['size_bytes']:>12,d}  {mem['name']}")
    sig = doc["signature"]
    click.echo(f"  signature: {'key ' + sig['key_id'][:16] + '…' if sig['signed'] else 'none'}")


def _reference_check(path: Path, manifest: Manifest, max_bytes: int) -> dict:
    """Re-run the reference images on this machine when the target's runtime is here."""
    from edgetl.bundle import extract_bundle, load_runtime
    from edgetl.errors import MissingDependencyError, UnknownComponentError
    from edgetl.reference import check_reference

    if manifest.reference is None:
        return {"status": "skipped", "reason": "the bundle has no reference set"}
    with tempfile.TemporaryDirectory(prefix="edgetl-verify-") as tmp:
        extract_bundle(path, Path(tmp), max_bytes)
        try:
            runtime = load_runtime(Path(tmp), manifest)
        except (MissingDependencyError, UnknownComponentError) as exc:
            return {"status": "skipped", "reason": str(exc)}
        try:
            result = check_reference(Path(tmp), manifest, runtime)
        finally:
            runtime.close()
    result["status"] = "passed" if result["passed"] else "failed"
    return result


@bundle_group.command("verify")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--trust", "trust", multiple=True, type=click.Path(path_type=Path),
              help="A trusted public key (NAME.pub); repeat for several.")
@click.option("--no-reference", is_flag=True, help="Skip re-running the reference images here.")
@click.option("--max-bundle-mb", type=int, default=DEFAULT_MAX_MB, show_default=True,
              help="Refuse bundles larger than this when extracting.")
@json_option
def verify_cmd(file: Path, trust: tuple[Path, ...], no_reference: bool, max_bundle_mb: int,
               as_json: bool) -> None:
    """Check signature, hashes and schema, then the reference images on this machine.

    Without --trust the rest is checked and the exit status is 3 ("signature not checked").
    """
    from edgetl.bundle import open_bundle, verify_bundle
    from edgetl.manifest import as_manifest

    unchecked: SignatureNotCheckedError | None = None
    try:
        report = verify_bundle(file, list(trust))
    except SignatureNotCheckedError as exc:
        unchecked, report = exc, exc.report
    with open_bundle(file) as bundle:
        manifest = as_manifest(bundle.manifest)  # verify_bundle validated it
    if no_reference:
        report["reference"] = {"status": "skipped", "reason": "--no-reference"}
    else:
        report["reference"] = _reference_check(file, manifest, max_bundle_mb * 1024 * 1024)
    failed = report["reference"]["status"] == "failed"
    report["ok"] = unchecked is None and not failed
    if as_json:
        emit_json(report)
    else:
        sig = report["signature"]
        click.echo(f"{file}: {report['name']} {report['model_version']} ({report['target']} {report['precision']})")
        click.echo(f"  schema: ok   hashes: ok ({report['members']} members)")
        click.echo("  signature: " + (f"ok, key {sig['key_id'][:16]}…" if sig["checked"] else "NOT CHECKED"))
        ref = report["reference"]
        detail = (f" ({ref['n']} images, label agreement {ref['label_agreement']:.3f}, "
                  f"max abs diff {ref['max_abs_diff']:.2e} <= {ref['tolerance']['max_abs_diff']:.0e})"
                  if "n" in ref else f" ({ref.get('reason')})")
        click.echo(f"  reference: {ref['status']}{detail}")
    if failed:
        raise EdgetlError(f"{file}: reference check failed on this machine: "
                          + "; ".join(report["reference"].get("failures", [])[:3]))
    if unchecked is not None:
        info("signature not checked (pass --trust KEY.pub)")
        raise click.exceptions.Exit(3)
