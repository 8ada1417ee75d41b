"""`cairn server key`: create, list and revoke a workspace's API keys."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from cairn.cli import output
from cairn.cli.common import App, JsonFlag
from cairn.cli.server_options import DataOpt, DbOpt, WorkspaceOpt, now_ms, open_storage
from cairn.errors import NotFound
from cairn.model import iso
from cairn.server import backends, keys

key_app = App(
    help="API keys of a workspace: shown once when created, stored hashed, revocable.",
    no_args_is_help=True,
)


class Scope(StrEnum):
    read = "read"
    write = "write"
    admin = "admin"


@key_app.command("create")
def key_create(
    workspace: WorkspaceOpt,
    name: Annotated[str, typer.Option("--name", "-n", help="Who or what will use the key.")],
    scope: Annotated[
        Scope, typer.Option(help="read: pull; write: also push; admin: also manage keys.")
    ] = Scope.write,
    data: DataOpt = None,
    db: DbOpt = None,
    json_: JsonFlag = False,
) -> None:
    """Create an API key in a workspace and print it (shown this once only)."""
    storage = open_storage(data, db)
    try:
        key, token = keys.issue(
            storage, storage.workspace(workspace).id, name, [scope.value], now_ms()
        )
        detail = {"created": key.id, "name": name, "scopes": [scope.value], "by": "cli"}
        storage.audit(key.workspace_id, None, "key_create", detail, now_ms())
    finally:
        storage.close()
    if json_:
        output.emit_json({**keys.to_json(key), "key": token})
        return
    output.out.print(f"created key {key.id} ({name}, {scope.value}) in workspace {workspace}")
    output.out.print(f"key: {token}")
    output.out.print("store it now; it is not shown again (it is stored only as a hash).")


@key_app.command("list")
def key_list(
    workspace: WorkspaceOpt, data: DataOpt = None, db: DbOpt = None, json_: JsonFlag = False
) -> None:
    """List a workspace's API keys (never their secrets), revoked ones included."""
    storage = open_storage(data, db)
    try:
        listed = storage.keys(storage.workspace(workspace).id)
    finally:
        storage.close()
    if json_:
        output.emit_json([keys.to_json(k) for k in listed])
        return
    for key in listed:
        state = f"revoked {iso(key.revoked_at)}" if key.revoked_at else "live"
        used = iso(key.last_used_at) if key.last_used_at else "never"
        output.out.print(f"{key.id}  {key.name}  {','.join(key.scopes)}  {state}  last used {used}")


@key_app.command("revoke")
def key_revoke(
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="The key's id (from key list).")],
    data: DataOpt = None,
    db: DbOpt = None,
    json_: JsonFlag = False,
) -> None:
    """Revoke an API key: requests with it fail from now on (on a running server too)."""
    storage = open_storage(data, db)
    try:
        found = storage.find_key(key_id)
        if found is None:
            raise NotFound(f"no API key {key_id!r}; `cairn server key list -w NAME` shows them")
        key = storage.revoke_key(found.workspace_id, key_id, now_ms())
        detail = {"revoked": key_id, "by": "cli"}
        storage.audit(found.workspace_id, None, "key_revoke", detail, now_ms())
    finally:
        storage.close()
    backends.announce_keys_changed(data, db, [key_id])  # running servers drop it from caches
    if json_:
        output.emit_json(keys.to_json(key))
    else:
        output.out.print(f"revoked key {key.id} ({key.name})")
