"""The serving commands: the MCP server on stdio and the local HTTP API."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer

from cairn import config
from cairn.cli import output
from cairn.cli.common import until_stopped

AutosyncFlag = Annotated[
    bool,
    typer.Option(
        "--autosync/--no-autosync",
        help="Sync the store in the background while this runs (once `cairn sync setup` has "
        "run; only one process per store syncs at a time).",
    ),
]


def mcp(autosync: AutosyncFlag = True) -> None:
    """Run the MCP server on stdio (configure your agent to start `cairn mcp`)."""
    # Imported here: the MCP SDK is slow to import and only this command needs it.
    from cairn import mcp_server

    with until_stopped():
        mcp_server.run(config.load(source="mcp"), autosync)


def serve(
    host: Annotated[str, typer.Option(help="Address to bind (local only by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7777,
    token: Annotated[
        str | None,
        typer.Option(
            help="Require `Authorization: Bearer TOKEN` on every request (needed for a --host "
            "beyond this machine); CAIRN_LOCAL_TOKEN keeps it out of the process list."
        ),
    ] = None,
    autosync: AutosyncFlag = True,
) -> None:
    """Serve the local HTTP API and the memory browser at / (OpenAPI docs at /docs)."""
    # Imported here: FastAPI and uvicorn are slow to import and only this command needs them.
    from cairn import api

    settings = config.load(source="http")
    if token:
        settings = dataclasses.replace(settings, local_token=token)
    # uvicorn stops on SIGTERM, then raises it again: until_stopped makes that a clean exit.
    with until_stopped():
        api.run(settings, host, port, autosync, on_ready=output.announce)
