"""`cairn`: remember, recall and manage memories from the shell.

This is the CLI's composition root: it reads the configuration and wires the store; errors map
to exit codes through each error class's ``exit_code`` (see ``cairn.errors``).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

import cairn
from cairn.cli import output
from cairn.cli.common import App
from cairn.cli.doctor import doctor
from cairn.cli.exchange import export, import_
from cairn.cli.memories import edit, forget, list_, recall, remember, show
from cairn.cli.project import project_app
from cairn.cli.server import server_app
from cairn.cli.serving import mcp, serve
from cairn.cli.store import repair, stats
from cairn.cli.sync import sync_app
from cairn.errors import CairnError

app = App(
    name="cairn",
    help="Long-term memory for AI coding agents: remember and recall knowledge, offline.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# `cairn --help` lists the commands in this order, then the groups.
app.command()(doctor)
app.command()(remember)
app.command()(recall)
app.command("list")(list_)
app.command()(show)
app.command()(edit)
app.command()(forget)
app.command()(export)
app.command("import")(import_)
app.command()(stats)
app.command()(repair)
app.command()(mcp)
app.command()(serve)
app.add_typer(project_app)
app.add_typer(server_app)
app.add_typer(sync_app)


def _version(value: bool) -> None:
    if value:
        output.out.print(f"cairn {cairn.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Long-term memory for AI coding agents: remember and recall knowledge, offline."""


def main() -> None:
    """Entry point: run the app and turn Cairn errors into a message and an exit code."""
    try:
        app()
    except CairnError as exc:
        if "--json" in sys.argv:
            output.emit_json({"error": exc.to_dict()})
        output.err.print(f"[red]error:[/] {escape(exc.message)}")
        sys.exit(exc.exit_code)
