"""`cairn server workspace delete`, `export`, `import` and `history`: a workspace's lifecycle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cairn.cli import output
from cairn.cli.common import JsonFlag
from cairn.cli.server_options import DataOpt, DbOpt, now_ms, open_storage
from cairn.errors import InvalidInput
from cairn.model import iso
from cairn.server import backends, transfer

YesFlag = Annotated[
    bool, typer.Option("--yes", "-y", help="Do not ask; for scripts (the deletion is final).")
]


def workspace_delete(
    name: Annotated[str, typer.Argument(help="The workspace's name.")],
    yes: YesFlag = False,
    data: DataOpt = None,
    db: DbOpt = None,
    json_: JsonFlag = False,
) -> None:
    """Delete a workspace for good: its log, keyring versions, devices, API keys, usage, audit
    entries and search index. Asks twice (the second time, type its name) unless --yes. The
    server's own audit log (`cairn server workspace history`) keeps a record of the deletion.
    Devices keep their local memories; their API keys stop working at once."""
    storage = open_storage(data, db)
    try:
        workspace = storage.workspace(name)  # NotFound: nothing asked, nothing changed
        if not yes:
            stats = storage.stats(workspace.id)
            typer.confirm(
                f"delete workspace {name} ({workspace.id}) with its {stats.mutations} "
                f"changes and {stats.devices} devices? This cannot be undone",
                abort=True,
                err=True,
            )
            typed = typer.prompt("type the workspace's name to confirm", err=True)
            if typed != name:
                raise InvalidInput(f"{typed!r} is not {name!r}; nothing was deleted")
        deleted = storage.delete_workspace(workspace.id, now_ms(), by="cli")
    finally:
        storage.close()
    backends.announce_keys_changed(data, db, None)  # its keys leave the servers' caches
    if json_:
        output.emit_json({"workspace": name, "id": workspace.id, "deleted": deleted})
        return
    output.out.print(
        f"deleted workspace {name} ({workspace.id}): {deleted['mutations']} changes, "
        f"{deleted['devices']} devices, {deleted['api_keys']} API keys "
        f"({sum(deleted.values())} rows in all)"
    )


def workspace_history(
    limit: Annotated[int, typer.Option(min=1, help="How many entries, newest first.")] = 50,
    data: DataOpt = None,
    db: DbOpt = None,
    json_: JsonFlag = False,
) -> None:
    """The server's own audit log: workspaces deleted (and imported), newest first. It outlives
    the workspaces it names."""
    storage = open_storage(data, db)
    try:
        events = storage.server_events(limit)
    finally:
        storage.close()
    rows = [
        {
            "at": iso(e.at),
            "action": e.action,
            "workspace_id": e.workspace_id,
            "workspace": e.workspace_name,
            "detail": e.detail,
        }
        for e in events
    ]
    if json_:
        output.emit_json(rows)
        return
    if not rows:
        output.err.print("nothing yet: no workspace was deleted or imported on this server")
    for row in rows:
        output.out.print(f"{row['at']}  {row['action']}  {row['workspace']}  {row['workspace_id']}")


def workspace_export(
    name: Annotated[str, typer.Argument(help="The workspace's name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The file to write (JSON Lines).")],
    data: DataOpt = None,
    db: DbOpt = None,
    json_: JsonFlag = False,
) -> None:
    """Write a workspace to one file to import on another server: its mutation log as stored
    (still sealed; seqs kept, so devices carry on), keyring versions, devices and quota. API
    keys are not in it: issue new ones on the new server."""
    storage = open_storage(data, db)
    partial = out.with_name(out.name + ".partial")
    try:
        workspace = storage.workspace(name)
        with partial.open("w", encoding="utf-8") as file:
            lines = 0
            for line in transfer.export(storage, workspace, now_ms()):
                file.write(line + "\n")
                lines += 1
        partial.replace(out)  # a file at --out is always a whole export
    finally:
        partial.unlink(missing_ok=True)
        storage.close()
    if json_:
        output.emit_json({"workspace": name, "id": workspace.id, "file": str(out), "lines": lines})
        return
    output.out.print(f"exported workspace {name} ({workspace.id}) to {out}: {lines} lines")


def workspace_import(
    file: Annotated[Path, typer.Argument(help="A file from `cairn server workspace export`.")],
    data: DataOpt = None,
    db: DbOpt = None,
    json_: JsonFlag = False,
) -> None:
    """Add a workspace exported from another server, with its id, name, log, keyring versions
    and devices, all or nothing; refused if this server has a workspace with its id or name.
    Then create an API key for it (`cairn server key create`) and point devices here."""
    storage = open_storage(data, db)
    try:
        with file.open(encoding="utf-8") as source:
            workspace, counts = transfer.read(source, storage, now_ms(), by="cli")
    except OSError as exc:
        raise InvalidInput(f"cannot read {file}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{file} is not a workspace export (not UTF-8 text)") from exc
    finally:
        storage.close()
    if json_:
        output.emit_json({"workspace": workspace.name, "id": workspace.id, **counts})
        return
    output.out.print(
        f"imported workspace {workspace.name} ({workspace.id}): {counts['mutations']} changes, "
        f"{counts['keyrings']} keyring versions, {counts['devices']} devices; create a key "
        f"with `cairn server key create --workspace {workspace.name} --name NAME`"
    )
