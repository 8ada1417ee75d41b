"""`cairn server`: run the sync server and manage its workspaces and API keys.

This is the sync server's composition root: it reads the environment and the options, opens
the storage under ``--data`` and wires the app. The admin commands (``cairn.cli.server_workspaces``,
``cairn.cli.server_keys``) work on that database directly (no server needs to be running), so
whoever can read the folder is its administrator.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from typing import Annotated

import typer

from cairn.cli import output
from cairn.cli.common import App
from cairn.cli.server_keys import key_app
from cairn.cli.server_options import DataOpt, DbOpt, open_storage
from cairn.cli.server_workspaces import workspace_app
from cairn.errors import InvalidInput
from cairn.server import backends

server_app = App(
    name="server",
    help="Run a Cairn sync server and manage its workspaces and API keys.",
    no_args_is_help=True,
)
server_app.add_typer(workspace_app, name="workspace")
server_app.add_typer(key_app, name="key")


class LogLevel(StrEnum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"


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
    recheck: Annotated[
        float,
        typer.Option(
            min=1,
            help="Seconds between a waiting long-poll's safety re-reads of the database; news "
            "of a push wakes it at once, from any worker or host.",
        ),
    ] = 30.0,
    key_cache_ttl: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds a worker trusts an API key it cached before reading it again (all "
            "in one query); revocations reach every worker and host at once anyway. 0: no cache.",
        ),
    ] = 60.0,
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
    compact_interval: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds between compactions of the logs of workspaces with a retention "
            "policy (`cairn server workspace set-retention`); 0: never.",
        ),
    ] = 3600.0,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            help="Behind a reverse proxy: its addresses (comma-separated IPs or networks), "
            "whose X-Forwarded-For then names the client. Default: trust no such header.",
        ),
    ] = None,
    operator_workspace: Annotated[
        str | None,
        typer.Option(
            help="The workspace whose admin keys operate the whole server in the admin console "
            "at /dashboard (every workspace, new workspaces, quotas). Default: each admin key "
            "sees its own workspace only.",
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
        recheck=recheck,
        key_cache_ttl=key_cache_ttl,
        auth_failure_rate=auth_failure_rate,
        auth_failure_burst=auth_failure_burst,
        compact_interval=compact_interval,
        workers=workers,
        operator_workspace=operator_workspace,
    )
    storage = open_storage(data, db)  # created or migrated once, before any worker starts
    if operator_workspace is not None:
        storage.workspace(operator_workspace)  # NotFound, naming the command that lists them
    where = storage.path
    procs = f" with {workers} workers" if workers > 1 else ""
    output.err.print(f"cairn sync server on http://{host}:{port}{procs}, data in {where}")
    level = log_level.value
    if workers > 1:
        storage.close()
        folder = backends.data_dir(data)
        app.run_workers(workers, settings, folder, db, host, port, level, proxies)
        return
    notifier = backends.open_notifier(data, db)
    try:
        app.run(storage, settings, host, port, level, proxies, notifier)
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
