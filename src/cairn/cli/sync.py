"""`cairn sync`: set up, run and inspect sync between this device and a remote."""

from __future__ import annotations

import json
import threading
from typing import Annotated, Any

import typer
from rich.markup import escape

from cairn import config, wiring
from cairn.cli import output, sync_ephemeral, sync_review, sync_setup
from cairn.cli.common import App, JsonFlag, open_store, progress_to, until_stopped
from cairn.cli.sync_review import saved_syncer
from cairn.cli.sync_setup import ask_passphrase
from cairn.errors import (
    AuthFailed,
    CairnError,
    Forbidden,
    MutationRejected,
    RemoteUnreachable,
    SyncError,
)
from cairn.sync.handoff import LEASE_TTL
from cairn.sync.status import WorkerStatus

sync_app = App(
    name="sync",
    help="Sync memories with other devices through a Cairn sync server, an S3 bucket, a folder "
    "or a git repository.",
    no_args_is_help=True,
)


sync_app.command()(sync_setup.setup)


@sync_app.command()
def passphrase(json_: JsonFlag = False) -> None:
    """Change the workspace's passphrase (asked twice, or CAIRN_NEW_PASSPHRASE; at least 8
    characters); nothing is re-encrypted and other devices keep working."""
    new = ask_passphrase(True, "CAIRN_NEW_PASSPHRASE")
    with saved_syncer() as syncer:
        syncer.envelopes.change_passphrase(new)
    if json_:
        output.emit_json({"passphrase_changed": True})
    else:
        output.out.print("[green]passphrase changed[/]; new devices join with the new one")


@sync_app.command("rotate-key")
def rotate_key(
    keep_old: Annotated[
        bool,
        typer.Option(
            "--keep-old-writable",
            help="Let devices keep sealing new changes with the earlier keys (by default the "
            "remote refuses them, and those devices re-seal with the new key).",
        ),
    ] = False,
    json_: JsonFlag = False,
) -> None:
    """Start encrypting new changes with a fresh key; older changes stay readable."""
    with saved_syncer() as syncer:
        result = syncer.envelopes.rotate(revoke=not keep_old)
    if json_:
        output.emit_json(result)
    else:
        revoked = ", ".join(map(str, result["revoked_key_ids"])) or "none"
        output.out.print(
            f"[green]rotated[/]: new changes are sealed with key {result['current_key_id']}; "
            f"revoked for new changes: {revoked} (still readable)"
        )


@sync_app.command()
def push(json_: JsonFlag = False) -> None:
    """Send this device's changes to the remote (while a sync worker runs for this store, it
    is asked to run a full round instead)."""
    _sync("push", "pushing", json_)


@sync_app.command()
def pull(
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for new changes when there are none.")
    ] = 0.0,
    json_: JsonFlag = False,
) -> None:
    """Apply the changes other devices sent to the remote (while a sync worker runs for this
    store, it is asked to run a full round instead)."""
    _sync("pull", "pulling", json_, wait)


@sync_app.command()
def now(json_: JsonFlag = False) -> None:
    """Push, then pull, then push what the pull changed: one full round (run by the store's
    sync worker if one runs, so two processes never sync the store at once)."""
    _sync("now", "syncing", json_)


def _sync(what: str, label: str, json_: bool, wait: float = 0.0) -> None:
    settings = config.load()
    with open_store() as store, progress_to(label) as update:
        report = wiring.sync_now(settings, store, what, update, wait)
    _report(report, json_)


def _report(report: dict[str, dict[str, Any]], json_: bool) -> None:
    """Print what a sync did; refused changes are named with their reasons, and when changes
    were refused and none was sent, the command fails (exit 8, as MutationRejected)."""
    pushes = [counts for step, counts in report.items() if step.startswith("push")]
    refused = sum(counts.get("dead_lettered", 0) for counts in pushes)
    reasons: dict[str, int] = {}
    for counts in pushes:
        for code, n in counts.get("dead_letter_reasons", {}).items():
            reasons[code] = reasons.get(code, 0) + n
    why = ", ".join(f"{code}: {n}" for code, n in sorted(reasons.items()))
    failure = None
    if refused and not sum(counts.get("pushed", 0) for counts in pushes):
        failure = MutationRejected(
            f"the remote refused {refused} {'change' if refused == 1 else 'changes'} and none was "
            f"sent ({why}); "
            "`cairn sync dead-letters` shows why, and `--retry` queues them again"
        )
    if json_:
        output.emit_json({**report, "error": failure.to_dict()} if failure else report)
    else:
        for step, counts in report.items():
            shown = ", ".join(
                f"{k.replace('_', ' ')} {v}"
                for k, v in counts.items()
                if v and k != "dead_letter_reasons"
            )
            idle = "nothing new" if step == "pull" else "nothing to send"
            output.out.print(f"{step.replace('_', ' ')}: {shown or idle}")
        if refused:
            changes = "change" if refused == 1 else "changes"
            output.out.print(
                f"[yellow]{refused} {changes} refused by the remote ({why})[/]; "
                "`cairn sync dead-letters` shows why, `--retry` queues them again"
            )
        if report.get("pull", {}).get("failed"):
            output.out.print(
                "[yellow]some pulled changes could not be read[/]; `cairn sync dead-letters` "
                "shows why"
            )
    if failure is not None:
        output.err.print(f"[red]error:[/] {escape(failure.message)}")
        raise typer.Exit(failure.exit_code)


@sync_app.command()
def compact(
    stale_days: Annotated[
        float,
        typer.Option(
            "--stale-days",
            min=0.0,
            help="A device that has not synced for this many days no longer holds old "
            "batches back (it reads the snapshot when it returns).",
        ),
    ] = 30.0,
    json_: JsonFlag = False,
) -> None:
    """Compact an S3 or folder remote: write an encrypted snapshot so a new device does not
    replay the whole history, then remove the batches every device has read. Safe beside
    syncing devices; one compaction runs at a time (a lock object, stale after 10 min)."""
    settings = config.load()
    with open_store() as store, progress_to("compacting") as update:
        report = wiring.compact(settings, store, stale_days, lambda _s, d, t: update(d, t or d))
    if json_:
        output.emit_json(report)
        return
    if report["snapshot"] is None:
        output.out.print("nothing to compact: the remote holds no changes yet")
        return
    made = "wrote" if report["new_snapshot"] else "kept"
    output.out.print(
        f"[green]compacted[/]: {made} snapshot {report['snapshot']} "
        f"({output.plural(report['snapshot_mutations'], 'change')} in "
        f"{output.plural(report['snapshot_parts'], 'part')}); removed "
        f"{output.plural(report['removed_batches'], 'batch', 'batches')}, kept "
        f"{output.plural(report['kept_batches'], 'batch', 'batches')} that a device has not "
        "read yet"
    )
    if report["skipped_objects"]:
        output.out.print(
            f"[yellow]{output.plural(len(report['skipped_objects']), 'object')} did not "
            "open[/] and were left out: " + ", ".join(sorted(report["skipped_objects"]))
        )


@sync_app.command()
def status(json_: JsonFlag = False) -> None:
    """Where this device syncs to, what waits to be sent, whether the remote answers, and what
    the background sync worker (if one runs for this store) is doing."""
    settings = config.load()
    with open_store() as store:
        data = wiring.sync_status(settings, store)
        if data["configured"]:
            try:
                syncer = wiring.build_syncer(settings, store)
            except CairnError as exc:  # the local part still shows; the error says what is wrong
                data.update(reachable=_reached(exc), error=exc.to_dict())
            else:
                try:
                    data.update(syncer.status())
                finally:
                    syncer.close()
    if json_:
        output.emit_json(data)
        return
    pending = data["pending"]
    if not data["configured"]:
        output.out.print(
            "sync          off (not set up on this device; `cairn sync setup --remote URL` "
            "sets it up)"
        )
        output.out.print(f"device        {data['device_id']}")
        output.out.print(
            f"pending       {pending} ({output.plural(pending, 'change')} kept on this device "
            "until sync is set up)"
            if pending
            else "pending       0"
        )
        return
    output.out.print(f"remote        {data['remote']}  {_reachability(data)}")
    output.out.print(f"device        {data['device_id']}")
    output.out.print(f"pending       {pending}")
    output.out.print(f"dead letters  {data['dead_letters']}")
    output.out.print(f"conflicts     {data['conflicts']}")
    if data.get("keyring"):
        problem = data["keyring"]
        output.out.print(
            f"keyring       [yellow]{problem['reason']}[/]: {escape(problem['message'])}"
        )
    output.out.print(f"last push     {data['last_push_at'] or 'never'}")
    output.out.print(f"last pull     {data['last_pull_at'] or 'never'}")
    worker = data["worker"]
    reason = f" ({worker['reason']})" if worker["reason"] else ""
    output.out.print(f"worker        {worker['phase']}{reason}: {escape(worker['message'])}")


def _reached(exc: CairnError) -> bool | None:
    """Whether the remote answered, from what went wrong: a refusal is an answer; a local
    problem (the saved key, the settings) says nothing about the remote (None)."""
    if isinstance(exc, RemoteUnreachable):
        return False
    return True if isinstance(exc, SyncError) else None


def _reachability(data: dict[str, Any]) -> str:
    """The remote's part of `cairn sync status`: reached or not, and what it refused."""
    error = data.get("error")
    if error is None:
        return "[green]reachable[/]"
    message = escape(error["message"])
    if error["code"] == RemoteUnreachable.code:
        return f"[red]unreachable[/] ({message})"
    if error["code"] in (AuthFailed.code, Forbidden.code):
        return f"[red]reached, but it refused this device's API key[/] ({message})"
    if data.get("reachable"):
        return f"[red]reached, but[/] {message}"
    return f"[red]not checked[/]: {message}"


@sync_app.command()
def daemon(
    json_: Annotated[
        bool, typer.Option("--json", help="Print each status change as a JSON line.")
    ] = False,
    lease_ttl: Annotated[
        float, typer.Option(hidden=True, min=1.0, help="Seconds a lease lasts (tests).")
    ] = LEASE_TTL,
) -> None:
    """Sync this store in the foreground until interrupted: push local changes within seconds,
    pull remote ones as they arrive, back off while offline (run it as a user service).

    Only one process syncs a store at a time: a second daemon (or an MCP server or `cairn
    serve` with autosync) waits, and takes over within 15 s if the first one dies."""
    settings = config.load()

    def show(status: WorkerStatus) -> None:
        if json_:
            print(json.dumps(status.to_dict()), flush=True)
        else:
            reason = f" ({status.reason})" if status.reason else ""
            output.announce(f"{status.phase}{reason}: {status.message}")

    with open_store() as store, until_stopped():
        worker = wiring.start_autosync(settings, store, lease_ttl=lease_ttl, on_status=show)
        try:
            threading.Event().wait()
        finally:
            worker.stop(flush=wiring.FLUSH_SECONDS)


# Registered last, so `cairn sync --help` lists them after the commands that run sync.
sync_app.command("ephemeral")(sync_ephemeral.run)
sync_app.command()(sync_review.conflicts)
sync_app.command()(sync_review.resolve)
sync_app.command("dead-letters")(sync_review.dead_letters)
