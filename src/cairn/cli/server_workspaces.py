"""`cairn server workspace`: create, list and limit workspaces, and look after their keyrings."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from cairn.cli import output
from cairn.cli.common import App, JsonFlag
from cairn.cli.server_lifecycle import (
    workspace_delete,
    workspace_export,
    workspace_history,
    workspace_import,
)
from cairn.cli.server_options import DataOpt, DbOpt, now_ms, open_storage
from cairn.cli.server_retention import workspace_compact, workspace_set_retention
from cairn.errors import InvalidInput
from cairn.model import iso
from cairn.protocol import E2E, HOSTED
from cairn.server import keyrings, keys
from cairn.server.storage import Quota, Workspace

workspace_app = App(
    help="Workspaces: each has its own mutation log, keyring, devices and API keys.",
    no_args_is_help=True,
)
workspace_app.command("delete")(workspace_delete)
workspace_app.command("history")(workspace_history)
workspace_app.command("export")(workspace_export)
workspace_app.command("import")(workspace_import)
workspace_app.command("set-retention")(workspace_set_retention)
workspace_app.command("compact")(workspace_compact)


class Mode(StrEnum):
    e2e = E2E
    hosted = HOSTED


@workspace_app.command("create")
def workspace_create(
    name: Annotated[str, typer.Argument(help="A short name: letters, digits and _.-")],
    mode: Annotated[
        Mode,
        typer.Option(
            help="e2e: devices encrypt everything and this server cannot read it. hosted: "
            "devices send plain text, which this server stores and can read."
        ),
    ] = Mode.e2e,
    data: DataOpt = None,
    db: DbOpt = None,
    json_: JsonFlag = False,
) -> None:
    """Create a workspace and print its first admin key (shown this once only)."""
    storage = open_storage(data, db)
    try:
        workspace, token = keys.create_workspace(storage, name, now_ms(), mode.value)
    finally:
        storage.close()
    if mode is Mode.hosted:
        output.err.print(
            "[yellow]hosted workspace[/]: its memories are NOT end-to-end encrypted. Devices "
            "send them in plain text, and this server and whoever runs it can read them."
        )
    if json_:
        output.emit_json({**_workspace_json(workspace), "key": token})
        return
    output.out.print(f"created {workspace.mode} workspace {name} ({workspace.id})")
    output.out.print(f"admin key: {token}")
    output.out.print("store it now; it is not shown again (it is stored only as a hash).")


@workspace_app.command("list")
def workspace_list(data: DataOpt = None, db: DbOpt = None, json_: JsonFlag = False) -> None:
    """List the workspaces with how many mutations, devices and keys each holds."""
    storage = open_storage(data, db)
    try:
        rows = []
        for workspace in storage.workspaces():
            stats = storage.stats(workspace.id)
            used = storage.usage(workspace.id, 1, now_ms())
            live = [k for k in storage.keys(workspace.id) if k.revoked_at is None]
            rows.append(
                {
                    **_workspace_json(workspace),
                    "latest_seq": stats.latest_seq,
                    "mutations": stats.mutations,
                    "stored_bytes": used.stored_bytes,
                    "quota": vars(used.quota),
                    "devices": stats.devices,
                    "keys": len(live),
                }
            )
    finally:
        storage.close()
    if json_:
        output.emit_json(rows)
        return
    if not rows:
        output.err.print("no workspaces; create one with `cairn server workspace create NAME`")
    for row in rows:
        output.out.print(
            f"{row['name']}  {row['id']}  {row['mode']}  mutations {row['mutations']}  bytes "
            f"{row['stored_bytes']}  devices {row['devices']}  keys {row['keys']}  created "
            f"{row['created_at']}"
        )


@workspace_app.command("set-quota")
def workspace_set_quota(
    name: Annotated[str, typer.Argument(help="The workspace's name.")],
    max_mutations: Annotated[
        int | None,
        typer.Option(min=0, help="Most changes the workspace may hold (every push adds some)."),
    ] = None,
    max_bytes: Annotated[
        int | None, typer.Option(min=0, help="Most bytes of stored changes it may hold.")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove every limit.")] = False,
    data: DataOpt = None,
    db: DbOpt = None,
    json_: JsonFlag = False,
) -> None:
    """Limit what a workspace may hold. A push that would go over is refused with 429
    quota_exceeded and nothing of it is stored; devices keep the changes and send them once
    the quota allows (raise it, or `--clear`). Options not given keep their current value."""
    if clear and (max_mutations is not None or max_bytes is not None):
        raise InvalidInput("--clear removes every limit; give it alone")
    storage = open_storage(data, db)
    try:
        workspace = storage.workspace(name)
        current = storage.usage(workspace.id, 1, now_ms())
        quota = (
            Quota()
            if clear
            else Quota(
                max_mutations if max_mutations is not None else current.quota.max_mutations,
                max_bytes if max_bytes is not None else current.quota.max_bytes,
            )
        )
        storage.set_quota(workspace.id, quota)
        detail = {"max_mutations": quota.max_mutations, "max_bytes": quota.max_bytes, "by": "cli"}
        storage.audit(workspace.id, None, "quota_set", detail, now_ms())
    finally:
        storage.close()
    result = {
        "workspace": name,
        **vars(quota),
        "mutations": current.mutations,
        "stored_bytes": current.stored_bytes,
    }
    if json_:
        output.emit_json(result)
        return
    limits = ", ".join(
        f"{label} {value}"
        for label, value in (("changes", quota.max_mutations), ("bytes", quota.max_bytes))
        if value is not None
    )
    output.out.print(
        f"workspace {name}: {'limited to ' + limits if limits else 'no quota'} "
        f"(holds {current.mutations} changes, {current.stored_bytes} bytes)"
    )


@workspace_app.command("keyring")
def workspace_keyring(
    name: Annotated[str, typer.Argument(help="The workspace's name.")],
    limit: Annotated[int, typer.Option(min=1, help="How many versions, newest first.")] = 50,
    data: DataOpt = None,
    db: DbOpt = None,
    json_: JsonFlag = False,
) -> None:
    """List a workspace's keyring versions, newest first: size, digest, revoked key ids, and
    whether each is signed by the workspace's master key (and for which version)."""
    storage = open_storage(data, db)
    try:
        found = storage.keyring_versions(storage.workspace(name).id, limit)
    finally:
        storage.close()
    rows = [keyrings.summary(v) for v in found]
    if json_:
        output.emit_json(rows)
        return
    if not rows:
        output.err.print(f"workspace {name} has no keyring yet")
    for row in rows:
        signed = (
            f"signed for version {row['signed_version']}"
            if row["signed"]
            else "UNSIGNED (made before keyrings were signed, or by an admin key)"
        )
        revoked = ",".join(map(str, row["revoked_key_ids"])) or "-"
        output.out.print(
            f"{row['version']}  {row['bytes']} bytes  sha256 {row['sha256'][:16]}  "
            f"revoked {revoked}  {signed}"
        )


@workspace_app.command("rollback-keyring")
def workspace_rollback_keyring(
    name: Annotated[str, typer.Argument(help="The workspace's name.")],
    version: Annotated[int, typer.Argument(min=1, help="The earlier version to restore.")],
    data: DataOpt = None,
    db: DbOpt = None,
    json_: JsonFlag = False,
) -> None:
    """Store an earlier keyring version again as the newest (audited): for when the newest is
    wrong, e.g. made before keyrings were signed. Devices take it when it is signed by the
    workspace's master key; data keys added after that version stay only on the devices that
    already hold them."""
    storage = open_storage(data, db)
    try:
        workspace = storage.workspace(name)
        made = keyrings.rollback(storage, workspace.id, None, version, None, now_ms(), by="cli")
    finally:
        storage.close()
    result = {"workspace": name, "version": made.version, "restored": version}
    if json_:
        output.emit_json(result)
        return
    output.out.print(
        f"workspace {name}: keyring version {version} restored as version {made.version}"
    )


def _workspace_json(workspace: Workspace) -> dict[str, Any]:
    return {
        "id": workspace.id,
        "name": workspace.name,
        "mode": workspace.mode,
        "created_at": iso(workspace.created_at),
    }
