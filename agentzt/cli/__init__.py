"""The ``agentzt`` command line: thin commands that parse, call the library and render."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from agentzt import __version__
from agentzt.config import Paths
from agentzt.errors import AgentztError

app = typer.Typer(
    name="agentzt",
    help="A zero-trust gateway between AI agents and the models and tools they call.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"agentzt {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", envvar="AGENTZT_CONFIG", help="Config directory.", show_default="./config"
        ),
    ] = None,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home", envvar="AGENTZT_HOME", help="State directory.", show_default="./.agentzt"
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    ctx.obj = Paths.resolve(config, home)


def paths_of(ctx: typer.Context) -> Paths:
    paths = ctx.find_root().obj
    assert isinstance(paths, Paths)
    return paths


def main() -> None:
    """Entry point: one line on stderr and the error's exit code, no traceback unless --debug."""
    from agentzt.cli import commands  # noqa: F401  (registers the commands)

    debug = "--debug" in sys.argv[1:]
    try:
        app()
    except AgentztError as exc:
        if debug:
            raise
        typer.echo(f"agentzt: error: {exc.detail}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        typer.echo(
            f"agentzt: unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            err=True,
        )
        sys.exit(1)
