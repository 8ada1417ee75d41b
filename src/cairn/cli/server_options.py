"""What every `cairn server` command shares: the --data, --db and --workspace options."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from cairn.server import backends
from cairn.server.storage import ServerStorage

DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="Server data folder (default: $CAIRN_SERVER_DATA, else $CAIRN_HOME/server, "
        "else ~/.cairn/server).",
    ),
]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="CAIRN_SERVER_DB",
        help="Keep the server's data in PostgreSQL instead of the embedded SQLite file: "
        "postgresql://user:password@host:5432/database (or set CAIRN_SERVER_DB).",
    ),
]
WorkspaceOpt = Annotated[str, typer.Option("--workspace", "-w", help="The workspace's name.")]


def open_storage(data: Path | None, db: str | None = None) -> ServerStorage:
    """The storage the --data and --db options name (the caller closes it)."""
    return backends.open_storage(data, db)


def now_ms() -> int:
    return int(time.time() * 1000)
