"""The ``edgetl`` command line: one module per command group, and the error boundary.

Command modules import only click at module level so ``edgetl --help`` stays
fast and torch-free; every heavy import lives inside a command function.
"""

from __future__ import annotations

import os
import traceback

import click

from edgetl import __version__
from edgetl.errors import EdgetlError

__all__ = ["cli", "main"]


def _debug_on() -> bool:
    return os.environ.get("EDGETL_DEBUG", "") not in ("", "0", "false")


class EdgetlGroup(click.Group):
    """The top-level group: turns errors into one line on stderr and an exit status."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgetlError as exc:
            if _debug_on():
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, BrokenPipeError):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # a bug: one line, traceback on request
            if _debug_on():
                traceback.print_exc()
            else:
                from edgetl.plugins import blame

                where = blame(exc) or "internal error"  # a plugin's bug names the plugin, not edgetl
                click.echo(f"error: {where}: {type(exc).__name__}: {exc} "
                           "(run with --debug for the traceback)", err=True)
            ctx.exit(1)


@click.group(cls=EdgetlGroup, context_settings={"help_option_names": ["-h", "--help"]},
             invoke_without_command=True)
@click.version_option(__version__, "--version", prog_name="edgetl")
@click.option("--debug", is_flag=True, help="Show tracebacks and library output (same as EDGETL_DEBUG=1).")
@click.option("-v", "--verbose", is_flag=True,
              help="Show what libraries print (nncf, torch, OpenVINO warnings); same as EDGETL_VERBOSE=1.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """Adapt a pretrained network to your images, export it, ship it to the camera.

    \b
      edgetl data elpv data/elpv            # materialise the ELPV defect set
      edgetl train examples/defect_detection/elpv-binary-linear-probe.yaml
      edgetl export runs/NAME --format openvino --sign demo.key
      edgetl deploy NAME.edgetl --device https://cam1:8470 --token-file tok
    """
    if debug:
        os.environ["EDGETL_DEBUG"] = "1"
    if verbose:
        os.environ["EDGETL_VERBOSE"] = "1"
    if ctx.invoked_subcommand is None:  # plain `edgetl`: the help is the answer, not a usage error
        click.echo(ctx.get_help())
        ctx.exit(0)


def _add_commands() -> None:
    from edgetl.cli import groups

    for command in groups.COMMANDS:
        cli.add_command(command)
    try:
        from edgetl.plugins import get_manager

        get_manager().add_commands(cli)
    except EdgetlError as exc:  # a broken built-in: --help still works, commands say why
        click.echo(f"error: {exc}", err=True)


_add_commands()


def main() -> None:
    """Console-script entry point.

    A closed pipe (``edgetl … | head``) ends the command quietly: the group lets
    ``BrokenPipeError`` through to click, which exits with status 1 and no message.
    """
    cli(prog_name="edgetl")


if __name__ == "__main__":  # pragma: no cover
    main()
