"""`cairn server`: run the sync server and manage its workspaces and API keys.

This is the sync server's composition root: it reads the environment and the options, opens
the storage under ``--data`` and wires the app. The admin commands work on that database
directly (no server needs to be running), so whoever can read the folder is its administrator.
"""

from __future__ import annotations

import ipaddress
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from cairn.cli import output
from cairn.cli.common import App
from cairn.errors import InvalidInput, NotFound
from cairn.model import iso
from cairn.protocol import E2E, HOSTED
from cairn.server import backends, keyrings, keys
from cairn.server.storage import Quota, ServerStorage, Workspace

server_app = App(
    name="server",
    help="Run a Cairn sync server and manage its workspaces and API keys.",
    no_args_is_help=True,
)
workspace_app = App(
    help="Workspaces: each has its own mutation log, keyring, devices and API keys.",
    no_args_is_help=True,
)
key_app = App(
    help="API keys of a workspace: shown once when created, stored hashed, revocable.",
    no_args_is_help=True,
)
server_app.add_typer(workspace_app, name="workspace")
server_app.add_typer(key_app, name="key")


class Mode(StrEnum):
    e2e = E2E
    hosted = HOSTED


class LogLevel(StrEnum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"


class Scope(StrEnum):
    read = "read"
    write = "write"
    admin = "admin"


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
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
WorkspaceOpt = Annotated[str, typer.Option("--workspace", "-w", help="The workspace's name.")]


def _open(data: Path | None, db: str | None = None) -> ServerStorage:
    return backends.open_storage(data, db)


@server_app.command()
def run(
    host: Annotated[str, typer.Option(help="Address to bind (0.0.0.0 for every interface).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8787,
    data: DataOpt = None,
    db: DbOpt = None,
    max_body: Annotated[
        int, typer.Option(help="Largest request body in bytes; bigger pushes get 413.")
    ] = 8 * 1024 * 1024,
    rate_limit: Annotated[
        float, typer.Option(help="Requests per second per API key (bursts of twice that); 0: off.")
    ] = 200.0,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Worker processes serving requests; each opens its own connections to the "
            "database (the rate limit then counts per worker).",
        ),
    ] = 1,
    auth_failure_rate: Annotated[
        float,
        typer.Option(
            min=0,
            help="Failed authentications per second allowed per client address and per key id "
            "once a burst is spent; more get 429. Valid keys never count. 0: off.",
        ),
    ] = 1.0,
    auth_failure_burst: Annotated[
        float,
        typer.Option(
            min=1, help="Failed authentications per client address and per key id at once."
        ),
    ] = 20.0,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            help="Behind a reverse proxy: its addresses (comma-separated IPs or networks), "
            "whose X-Forwarded-For then names the client. Default: trust no such header.",
        ),
    ] = None,
    log_level: Annotated[
        LogLevel, typer.Option(help="Least severe log records written to standard error.")
    ] = LogLevel.warning,
) -> None:
    """Run the sync server (HTTP) until interrupted; devices sync through it with an API key."""
    # Imported here: FastAPI and uvicorn are slow to import and only this command needs them.
    from cairn.server import app
    from cairn.server.context import ServerSettings

    proxies = _proxies(forwarded_allow_ips) if forwarded_allow_ips is not None else None
    settings = ServerSettings(
        max_body=max_body,
        rate_limit=rate_limit,
        rate_burst=2 * rate_limit,
        auth_failure_rate=auth_failure_rate,
        auth_failure_burst=auth_failure_burst,
    )
    storage = _open(data, db)  # created or migrated once, before any worker starts
    where = storage.path
    procs = f" with {workers} workers" if workers > 1 else ""
    output.err.print(f"cairn sync server on http://{host}:{port}{procs}, data in {where}")
    level = log_level.value
    if workers > 1:
        storage.close()
        folder = backends.data_dir(data)
        app.run_workers(workers, settings, folder, db, host, port, level, proxies)
        return
    try:
        app.run(storage, settings, host, port, level, proxies)
    finally:
        storage.close()


def _proxies(value: str) -> str:
    """``--forwarded-allow-ips`` checked: each entry an IP address or network (uvicorn would
    take a typo for a name that never matches, and trust nobody without saying so)."""
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:
            raise InvalidInput(
                f"--forwarded-allow-ips: {entry!r} is not an IP address or network; give the "
                "reverse proxy's addresses, e.g. 127.0.0.1 or 172.16.0.0/12"
            ) from exc
    if not entries:
        raise InvalidInput("--forwarded-allow-ips needs the reverse proxy's addresses")
    return ",".join(entries)


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
    storage = _open(data, db)
    try:
        workspace, token = keys.create_workspace(storage, name, _now(), mode.value)
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
    storage = _open(data, db)
    try:
        rows = []
        for workspace in storage.workspaces():
            stats = storage.stats(workspace.id)
            used = storage.usage(workspace.id, 1, _now())
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
    storage = _open(data, db)
    try:
        workspace = storage.workspace(name)
        current = storage.usage(workspace.id, 1, _now())
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
        storage.audit(workspace.id, None, "quota_set", detail, _now())
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
    storage = _open(data, db)
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
    storage = _open(data, db)
    try:
        workspace = storage.workspace(name)
        made = keyrings.rollback(storage, workspace.id, None, version, None, _now(), by="cli")
    finally:
        storage.close()
    result = {"workspace": name, "version": made.version, "restored": version}
    if json_:
        output.emit_json(result)
        return
    output.out.print(
        f"workspace {name}: keyring version {version} restored as version {made.version}"
    )


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
    storage = _open(data, db)
    try:
        key, token = keys.issue(
            storage, storage.workspace(workspace).id, name, [scope.value], _now()
        )
        detail = {"created": key.id, "name": name, "scopes": [scope.value], "by": "cli"}
        storage.audit(key.workspace_id, None, "key_create", detail, _now())
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
    storage = _open(data, db)
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
    storage = _open(data, db)
    try:
        found = storage.find_key(key_id)
        if found is None:
            raise NotFound(f"no API key {key_id!r}; `cairn server key list -w NAME` shows them")
        key = storage.revoke_key(found.workspace_id, key_id, _now())
        detail = {"revoked": key_id, "by": "cli"}
        storage.audit(found.workspace_id, None, "key_revoke", detail, _now())
    finally:
        storage.close()
    if json_:
        output.emit_json(keys.to_json(key))
    else:
        output.out.print(f"revoked key {key.id} ({key.name})")


def _workspace_json(workspace: Workspace) -> dict[str, Any]:
    return {
        "id": workspace.id,
        "name": workspace.name,
        "mode": workspace.mode,
        "created_at": iso(workspace.created_at),
    }


def _now() -> int:
    return int(time.time() * 1000)
