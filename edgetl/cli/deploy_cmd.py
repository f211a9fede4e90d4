"""``edgetl deploy``: upload a bundle to a device or a fleet, follow the install, print what was verified."""

from __future__ import annotations

import click

from edgetl.cli.common import emit_json, info, json_option


def describe(result) -> list[str]:
    """The lines saying what one device verified (signature, compatibility, reference check, switch)."""
    from edgetl import fmt

    report = result.report or {}
    lines = []
    sig = report.get("signature")
    if sig:
        lines.append(f"signature   ok, key {sig.get('key_id', '?')[:16]}…")
    verify = report.get("verify")
    if verify:
        lines.append(f"bundle      {verify.get('model_version')}: schema ok, {verify.get('members')} member hashes ok")
    compat = report.get("compatibility")
    if compat:
        arch = compat.get("arch") or {}
        runtimes = ", ".join(f"{k} {v.get('device') or '?'}" for k, v in (compat.get("runtimes") or {}).items())
        lines.append(f"compatible  {compat.get('format')} {compat.get('precision')} on {arch.get('device')}"
                     + (f" ({runtimes})" if runtimes else ""))
        lines.extend(f"  warning: {w}" for w in compat.get("warnings") or [])
    ref = report.get("reference")
    if ref:
        tol = ref.get("tolerance") or {}
        lines.append(f"reference   {'passed' if ref.get('passed') else 'FAILED'}: n={ref.get('n')}, label agreement "
                     f"{fmt.prob(ref.get('label_agreement', 0))} (need >= {fmt.prob(tol.get('label_agreement'))}), "
                     f"max |diff| {fmt.tol(ref.get('max_abs_diff', 0))} (bound {fmt.tol(tol.get('max_abs_diff'))})")
    switch = report.get("switch")
    if switch:
        lines.append(f"switch      {switch.get('from') or '(none)'} -> {switch.get('to')}")
    if result.error:
        lines.append(f"error       {result.error}")
    return lines


def print_summary(results, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("device", "result", "before", "after", "seconds"):
        table.add_column(col)
    for r in results:
        table.add_row(r.name, r.result, r.before or "-", r.after or "-", f"{r.seconds:.1f}")
    Console(stderr=True, soft_wrap=True).print(table)


@click.command("deploy")
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option("--device", "device_url", help="The agent's URL, e.g. https://cam1:8470.")
@click.option("--token-file", type=click.Path(dir_okay=False), help="File holding the device's token (first line).")
@click.option("--fleet", "fleet_file", type=click.Path(dir_okay=False), help="Fleet file (YAML) instead of --device.")
@click.option("--ca", type=click.Path(dir_okay=False), help="CA certificate (PEM) for devices with their own CA.")
@click.option("--parallel", default=4, show_default=True, type=click.IntRange(min=1),
              help="Devices installed at once after the canary.")
@click.option("--no-rollback", is_flag=True, help="On a failure keep the devices already changed.")
@click.option("--dry-run", is_flag=True, help="Check reachability, token, compatibility and versions only.")
@json_option
def deploy_command(bundle, device_url, token_file, fleet_file, ca, parallel, no_rollback, dry_run, as_json) -> None:
    """Upload BUNDLE, follow each install, print what each device verified.

    Exit status 0 only if every device ends on the new model.

    \b
      edgetl deploy model.edgetl --device https://cam1:8470 --token-file cam1.token
      edgetl deploy model.edgetl --fleet fleet.yaml --parallel 8
    """
    from edgetl.deploy.deployment import rollout
    from edgetl.errors import UsageError

    if bool(device_url) == bool(fleet_file):
        raise UsageError("give either --device URL --token-file F, or --fleet FLEET.yaml")
    if device_url and not token_file:
        raise UsageError("--device needs --token-file")
    done = rollout(bundle, device=device_url, token_file=token_file, fleet=fleet_file, ca=ca, parallel=parallel,
                   rollback=not no_rollback, dry_run=dry_run, log=info)
    if as_json:
        emit_json(done.to_dict())
    else:
        for r in done.devices:
            if r.report or r.error:
                click.echo(f"{r.name}: {r.result}")
                for line in describe(r):
                    click.echo(f"  {line}")
                if dry_run:
                    click.echo(f"  serving     {r.before or '(none)'}")
                    click.echo("".join(f"  warning: {w}\n" for w in r.warnings), nl=False)
        print_summary(done.devices, "dry run" if dry_run else "deploy")
    if not done.ok:
        raise done.failure()
