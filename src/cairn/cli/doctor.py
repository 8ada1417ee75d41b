"""`cairn doctor`: one line per thing that can be wrong on this device, and an exit code."""

from __future__ import annotations

import platform
import sqlite3
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from importlib.metadata import version
from typing import Annotated, Any

import typer
from rich.markup import escape

import cairn
from cairn import config, master_keys, wiring
from cairn.cli import output
from cairn.cli.common import JsonFlag
from cairn.errors import CairnError
from cairn.settings import Settings
from cairn.store import salvage

MAX_SKEW_S = 60.0
"""Clock skew past which a device is told to fix its clock: the hybrid clock keeps causality
whatever the skew, but times shown and `--since` filters drift with it."""

Check = tuple[str, str, str]
"""(name, ok | warn | fail | off, what was found)."""


def doctor(
    offline: Annotated[
        bool, typer.Option("--offline", help="Skip the checks that talk to the sync remote.")
    ] = False,
    json_: JsonFlag = False,
) -> None:
    """Check this device: store integrity, model, key store, sync remote (reachable, key
    accepted), clock skew and versions; one line each, exit 1 when something is wrong."""
    settings = config.load()
    checks: list[Check] = [
        _run("versions", _versions),
        _run("store", lambda: _store(settings)),
        _run("model", lambda: _model(settings)),
        _run("key store", lambda: _keys(settings)),
    ]
    if offline:
        checks.append(("remote", "off", "not checked (--offline)"))
    else:
        checks.extend(_remote(settings))
    failed = any(state == "fail" for _name, state, _found in checks)
    if json_:
        output.emit_json(
            {
                "ok": not failed,
                "checks": [{"check": n, "state": s, "found": f} for n, s, f in checks],
            }
        )
    else:
        marks = {
            "ok": "[green]ok[/]  ",
            "warn": "[yellow]warn[/]",
            "fail": "[red]FAIL[/]",
            "off": "off ",
        }
        for name, state, found in checks:
            output.out.print(f"{marks[state]} {name:<10} {escape(found)}")
    if failed:
        raise typer.Exit(1)


def _run(name: str, check: Callable[[], tuple[str, str]]) -> Check:
    try:
        state, found = check()
    except CairnError as exc:
        return name, "fail", exc.message
    return name, state, found


def _versions() -> tuple[str, str]:
    import onnxruntime

    return "ok", (
        f"cairn {cairn.__version__}, Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}, onnxruntime {onnxruntime.__version__}, mcp {version('mcp')}"
    )


def _store(settings: Settings) -> tuple[str, str]:
    path = settings.db_path
    if not path.exists():
        return "ok", f"{path} does not exist yet (made on the first remember)"
    problems = salvage.check(path, limit=3)
    if problems:
        return "fail", f"{path} is damaged ({problems[0]}); run `cairn repair`"
    with wiring.build(settings) as store:
        stats = store.stats()
    count = stats["memories"]
    memories = f"{count} memory" if count == 1 else f"{count} memories"
    return "ok", f"{path}: {memories}, {stats['bytes']:,} bytes, integrity ok"


def _model(settings: Settings) -> tuple[str, str]:
    embedder = wiring.build_embedder(settings)
    started = time.perf_counter()
    vector = embedder.embed(["cairn doctor checks the model"])[0]
    took = (time.perf_counter() - started) * 1000
    return "ok", (
        f"{embedder.model_id} loads and embeds ({vector.shape[0]} dims; load and first "
        f"embedding {took:.0f} ms)"
    )


def _keys(settings: Settings) -> tuple[str, str]:
    sync = settings.sync
    if sync.remote is None:
        return "off", "no workspace key (sync is not set up)"
    if sync.keyring_id is None:
        return "ok", "hosted workspace: no key to keep"
    if sync.master_key is not None:
        return "ok", "the workspace's master key is in keys/sync.json (mode 0600)"
    master_keys.load(sync.keyring_id)
    return "ok", "the workspace's master key is in the OS keyring"


def _remote(settings: Settings) -> list[Check]:
    if not wiring.sync_configured(settings):
        return [("remote", "off", "sync is not set up (`cairn sync setup --remote URL`)")]
    try:
        with wiring.build(settings) as store:
            syncer = wiring.build_syncer(settings, store)
            try:
                status: dict[str, Any] = syncer.remote.status()
            finally:
                syncer.close()
    except CairnError as exc:
        return [("remote", "fail", f"{settings.sync.remote}: {exc.message}")]
    checks: list[Check] = [("remote", "ok", f"{settings.sync.remote} reached, key accepted")]
    date = status.get("server_date")
    if isinstance(date, str):
        skew = time.time() - parsedate_to_datetime(date).timestamp()
        state = "warn" if abs(skew) > MAX_SKEW_S else "ok"
        side = "ahead of" if skew > 0 else "behind"
        checks.append(("clock", state, f"this device is {abs(skew):.0f} s {side} the server"))
    else:
        checks.append(("clock", "off", "the remote tells no time (object storage)"))
    return checks
