"""`cairn sync`: set up, run and inspect sync between this device and a remote."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote, urlparse

import typer
from rich.markup import escape

from cairn import config, master_keys, wiring
from cairn.cli import output
from cairn.cli.common import App, JsonFlag, open_store, progress_to, until_stopped
from cairn.crypto import keyring
from cairn.errors import (
    AuthFailed,
    CairnError,
    Forbidden,
    InvalidInput,
    MutationRejected,
    RemoteUnreachable,
    SyncError,
)
from cairn.model import iso
from cairn.protocol import E2E, HOSTED
from cairn.sync.engine import Syncer
from cairn.sync.handoff import LEASE_TTL
from cairn.sync.keys import join
from cairn.sync.status import WorkerStatus

sync_app = App(
    name="sync",
    help="Sync memories with other devices through a Cairn sync server, an S3 bucket, a folder "
    "or a git repository.",
    no_args_is_help=True,
)


@contextmanager
def _syncer() -> Iterator[Syncer]:
    settings = config.load()
    with open_store() as store:
        syncer = wiring.build_syncer(settings, store)
        try:
            yield syncer
        finally:
            syncer.close()


@sync_app.command()
def setup(
    remote_url: Annotated[
        str | None,
        typer.Option(
            "--remote",
            "--server",
            help="Where to sync: a Cairn sync server (https://...), an S3 or S3-compatible "
            "bucket (s3://bucket/prefix) or a folder that exists (/path/to/folder, ./folder or "
            "file:///path/to/folder).",
        ),
    ] = None,
    create: Annotated[
        bool,
        typer.Option(
            "--create",
            help="Make the folder if it does not exist: a new workspace, with its own "
            "passphrase and recovery key.",
        ),
    ] = False,
    endpoint_url: Annotated[
        str | None,
        typer.Option(
            "--endpoint-url",
            help="An S3-compatible service's endpoint (R2, B2, MinIO, ...); credentials come "
            "from the usual AWS variables or profile.",
        ),
    ] = None,
    git: Annotated[
        bool,
        typer.Option(
            "--git",
            help="Sync through the git repository you are in: a .cairn/ folder of small "
            "immutable files that you commit, push and pull (or --remote file:///... in a "
            "repository).",
        ),
    ] = False,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="CAIRN_API_KEY",
            help="An API key of the workspace (or set "
            "CAIRN_API_KEY, which keeps it out of your shell history).",
        ),
    ] = None,
    recovery_key: Annotated[
        str | None,
        typer.Option(
            "--recovery-key",
            envvar="CAIRN_RECOVERY_KEY",
            help="Join with the workspace's recovery key instead of its passphrase.",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="This device's name (default: the host name).")
    ] = None,
    json_: JsonFlag = False,
) -> None:
    """Connect this device to a workspace: check the remote, create or unlock the end-to-end
    encrypted keyring (passphrase asked, or CAIRN_PASSPHRASE; a new one needs at least 8
    characters), register the device, save.

    The workspace key goes to the OS keyring where one exists, else to a 0600 file under
    $CAIRN_HOME/keys (CAIRN_KEY_STORE=auto|keyring|file chooses)."""
    settings = config.load()
    device_name = name or settings.sync.device_name
    url = _remote_url(remote_url, git)
    if endpoint_url and not url.startswith("s3://"):
        raise InvalidInput("--endpoint-url is for s3:// remotes")
    parsed = urlparse(url)
    folder = (
        Path(unquote(parsed.path))
        if parsed.scheme == "file" and parsed.netloc in ("", "localhost")
        else None
    )
    if create and parsed.scheme != "file":
        raise InvalidInput("--create is for a folder remote")
    making = folder is not None and not folder.exists()
    if making and not (create or git):
        raise InvalidInput(
            f"the folder {folder} does not exist: check the path, or add --create to make it "
            "(a new workspace, with its own passphrase and recovery key)"
        )
    with open_store() as store:
        remote = wiring.open_remote(url, api_key, endpoint_url=endpoint_url, create=making)
        try:
            remote_status = remote.status()  # fails fast on a wrong URL or key
            keys, recovery = None, None
            hosted = remote_status.get("mode") == HOSTED
            if not hosted:
                creating = remote.get_keyring() is None
                passphrase = None if recovery_key else _passphrase(creating)
                keys, recovery = join(remote, passphrase, recovery_key)
            # Only now, with the keyring open, does anything change here.
            remote.register_device(store.device_id(), device_name)
            key_store = None
            if keys is not None:
                choice = settings.sync.key_store_choice
                key_store = master_keys.save(keys.keyring_id, keys.master, choice)
            path = config.save_sync(
                settings.home,
                remote.url,
                api_key,
                device_name,
                keys.master if keys else None,
                keys.keyring_id if keys else None,
                key_store or master_keys.FILE,
                endpoint_url,
            )
            if git:
                _mark_for_git(url)
            syncer = Syncer(store, remote, keys, settings.sync.rules)
            pending = syncer.status()["pending"]
        finally:
            remote.close()
    result = {
        "remote": remote.url,
        "workspace": remote_status.get("workspace"),
        "mode": HOSTED if hosted else E2E,
        "device_id": syncer.device_id,
        "device_name": device_name,
        "created_keyring": recovery is not None,
        "recovery_key": recovery,
        "key_store": key_store,
        "pending": pending,
        "saved_to": str(path),
    }
    if json_:
        output.emit_json(result)
        return
    if making:
        output.out.print(f"made the folder {folder} for a new workspace")
    workspace = f" (workspace {result['workspace']})" if result["workspace"] else ""
    output.out.print(
        f"[green]sync set up[/]: {result['remote']}{workspace}, "
        f"this device is {device_name} ({syncer.device_id})"
    )
    if hosted:
        output.out.print(
            "[yellow]this is a hosted workspace[/]: memories are sent in plain text and the "
            "server can read them (no passphrase, no end-to-end encryption)"
        )
    elif key_store == master_keys.OS_KEYRING:
        output.out.print("the workspace key is kept in the OS keyring")
    else:
        output.out.print(f"the workspace key is kept in {path} (readable by you only)")
    if recovery is not None:
        output.out.print(
            "created the workspace's end-to-end encryption keyring. Your recovery key, shown "
            f"this once:\n\n    [bold]{recovery}[/]\n\nwrite it down and keep it apart from "
            "the passphrase: with either, a new device can join; without either, nobody "
            "can read these memories (not even the server or storage holding them)."
        )
    output.out.print(
        f"{output.plural(pending, 'change')} to send"
        + ("; run `cairn sync now`" if pending else "")
    )
    if git:
        output.out.print(
            "then commit .cairn/ and push it; teammates pull, run `cairn sync setup --git` "
            "and join with the passphrase"
        )


def _remote_url(remote_url: str | None, git: bool) -> str:
    """The remote's URL from --remote (a plain folder path becomes a file:// URL), or the
    .cairn folder of this git repository (--git)."""
    if remote_url in (".", "..") or (remote_url or "").startswith(("/", "./", "../", "~")):
        assert remote_url is not None
        remote_url = Path(remote_url).expanduser().resolve().as_uri()
    if git:
        if remote_url is None:
            top = config.git_root()
            if top is None:
                raise InvalidInput("--git: this folder is not inside a git repository")
            return (top / ".cairn").as_uri()
        if not remote_url.startswith("file://"):
            raise InvalidInput("--git goes with a file:// remote inside a repository")
        if config.git_root(Path(unquote(urlparse(remote_url).path))) is None:
            raise InvalidInput(f"--git: {remote_url} is not inside a git repository")
        return remote_url
    if remote_url is None:
        raise InvalidInput("say where to sync: --remote URL (or --git in a repository)")
    return remote_url


def _mark_for_git(url: str) -> None:
    """Files git should take as they are (never converted or merged as text) and the ones it
    should not track (a compaction's lock, a storage probe, an interrupted write's staging
    file)."""
    folder = Path(unquote(urlparse(url).path))
    (folder / ".gitattributes").write_text("* -text -diff -merge\n", encoding="utf-8")
    (folder / ".gitignore").write_text("compact.lock\nprobes/\n*#*\n", encoding="utf-8")


def _passphrase(creating: bool, env: str = "CAIRN_PASSPHRASE") -> str:
    """The passphrase from the environment (scripts), else asked without echo."""
    if os.environ.get(env):
        return os.environ[env]
    if not sys.stdin.isatty():
        raise InvalidInput(f"no passphrase: set {env} or run this in a terminal")
    prompt = (
        f"new passphrase for the workspace (at least {keyring.MIN_PASSPHRASE} characters)"
        if creating
        else "the workspace's passphrase"
    )
    return str(typer.prompt(prompt, hide_input=True, confirmation_prompt=creating))


@sync_app.command()
def passphrase(json_: JsonFlag = False) -> None:
    """Change the workspace's passphrase (asked twice, or CAIRN_NEW_PASSPHRASE; at least 8
    characters); nothing is re-encrypted and other devices keep working."""
    new = _passphrase(True, "CAIRN_NEW_PASSPHRASE")
    with _syncer() as syncer:
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
    with _syncer() as syncer:
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


@sync_app.command()
def conflicts(json_: JsonFlag = False) -> None:
    """Memories whose text two devices changed at once: the text shown now and the other
    version kept beside it, with the device that wrote each."""
    settings = config.load()
    with _syncer() as syncer:
        found = syncer.conflicts()
        names = _device_names(syncer, settings.sync.device_name) if found else {}
    if json_:
        output.emit_json(
            [
                c.to_dict()
                | {
                    "device_name": names.get(c.device_id),
                    "current_device_name": names.get(c.current_device_id),
                }
                for c in found
            ]
        )
        return
    if not found:
        output.out.print("no conflicts")
        return

    def writer(device: str) -> str:
        name = escape(names.get(device, device))
        return f"{name} (this device)" if device == syncer.device_id else name

    for c in found:
        output.out.print(f"[bold]{c.id}[/]  memory {c.memory_id}")
        output.out.print(f"  shown now, written by {writer(c.current_device_id)}:")
        output.out.print(f"    {escape(c.current)}")
        output.out.print(f"  other version, written by {writer(c.device_id)}:")
        output.out.print(f"    {escape(c.content)}")
    output.out.print(
        "settle one with `cairn sync resolve ID --keep current` (the text shown now), "
        "`--keep other` (the other version) or `--keep both` (the other version becomes a "
        "memory of its own)"
    )


def _device_names(syncer: Syncer, own_name: str) -> dict[str, str]:
    """Device names by id as the remote knows them (none if it cannot say), and this one's."""
    try:
        names = syncer.remote.devices()
    except CairnError:
        names = {}
    return {**names, syncer.device_id: own_name}


KEEP = {"current": "local", "other": "remote", "both": "both", "local": "local", "remote": "remote"}
"""--keep choices, by what they keep (``local`` and ``remote``, their former names, still work),
to the sync engine's names."""


@sync_app.command()
def resolve(
    conflict: Annotated[
        str, typer.Argument(metavar="ID", help="A conflict id, or the memory's id.")
    ],
    keep: Annotated[
        str,
        typer.Option(
            metavar="current|other|both",
            help="current: keep the text shown now; other: keep the other version; both: keep "
            "the text shown now and make the other version a memory of its own.",
        ),
    ],
    json_: JsonFlag = False,
) -> None:
    """Settle a conflict; the choice syncs to every device like any other change."""
    if keep not in KEEP:
        raise InvalidInput(f"--keep {keep!r}: choose current, other or both")
    with _syncer() as syncer:
        result = syncer.resolve(conflict, KEEP[keep])
    result["kept"] = {"local": "current", "remote": "other", "both": "both"}[result["kept"]]
    if json_:
        output.emit_json(result)
        return
    kept = {"current": "the text shown now", "other": "the other version", "both": "both"}
    output.out.print(f"[green]resolved[/] {result['conflict']}: kept {kept[result['kept']]}")
    if result["created"]:
        output.out.print(f"  the other version is now memory {result['created']}")


@sync_app.command("dead-letters")
def dead_letters(
    retry: Annotated[
        bool, typer.Option("--retry", help="Queue the refused changes to be sent again.")
    ] = False,
    json_: JsonFlag = False,
) -> None:
    """Changes the remote refused (or pulled ones that could not be read), with the reason."""
    with _syncer() as syncer:
        letters = syncer.dead_letters()
        requeued = syncer.retry_dead_letters() if retry else 0
    if json_:
        output.emit_json(
            {
                "dead_letters": [asdict(d) | {"failed_at": iso(d.failed_at)} for d in letters],
                "requeued": requeued,
            }
        )
        return
    if not letters:
        output.out.print("no dead letters")
    for d in letters:
        output.out.print(
            f"{d.direction:4} {d.entity} {d.entity_id}  [red]{d.code}[/]: {escape(d.message)}"
        )
    if retry:
        output.out.print(
            f"{output.plural(requeued, 'change')} queued again"
            + ("; run `cairn sync push`" if requeued else "")
        )
