"""The hand-off between processes: one holds a store's sync lease, the others ask it for rounds.

One process per store syncs at a time: it holds the store's lease (``cairn.store.lease``),
renewing it while it runs; a crashed owner's lease expires and another process takes over (at
once when the owner was a process on this machine that no longer exists).

A sync someone asks for (``cairn sync now``, the MCP tool ``sync_now``, ``POST /v1/sync/now``)
goes through ``sync_now``: with nobody holding the lease it takes the lease and syncs itself;
otherwise it asks the holder (``lease.ask``), whose next tick runs a full round and records the
outcome (``cairn.store.sync_state.ROUND``) for the asker.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from cairn.device_store import Store
from cairn.errors import CairnError, SyncError, error_for
from cairn.sync.channel import Progress
from cairn.sync.engine import Syncer

LEASE_TTL = 15.0


def served(record: str | None) -> int:
    """The latest request a worker answered, from the latest round's record."""
    return int(json.loads(record)["served"]) if record else 0


def claim(store: Store, owner: str, ttl: float) -> bool:
    """Take or renew the store's lease for ``ttl`` seconds; False if another owner holds it.

    Trigger: the holder is a process of this machine that no longer exists (a `cairn sync now`
    SIGKILLed mid-sync). Why: its lease would block every sync here for up to ``ttl`` more
    seconds, with nothing to say why. Outcome: the lease is taken at once."""
    return store.sync_state.claim(owner, int(ttl * 1000), gone)


def new_owner(role: str) -> str:
    """A lease owner name that says which process holds it and why."""
    return f"{socket.gethostname()}:{os.getpid()}:{role}:{uuid.uuid4().hex[:8]}"


def gone(owner: str) -> bool:
    """Whether ``owner`` (``new_owner``'s form) names a process of this machine that has ended.
    False whenever that cannot be told: another machine's owner, or not a POSIX system (where
    signal 0 does not merely probe)."""
    host, _, rest = owner.partition(":")
    pid, _, _ = rest.partition(":")
    if os.name != "posix" or host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (another user's process, say)
    return False


@contextmanager
def holding(store: Store, owner: str, ttl: float = LEASE_TTL) -> Iterator[bool]:
    """Hold the store's lease for the block (renewed on a thread, released at the end) if
    nobody else does; yields whether it is held."""
    if not claim(store, owner, ttl):
        yield False
        return
    done = threading.Event()

    def renew() -> None:
        while not done.wait(ttl / 3):
            try:
                claim(store, owner, ttl)
            except CairnError:
                pass  # a busy store: the next try is a third of the lease away

    renewer = threading.Thread(target=renew, name="cairn-sync-lease", daemon=True)
    renewer.start()
    try:
        yield True
    finally:
        done.set()
        renewer.join()
        store.sync_state.release(owner)


def sync_now(
    store: Store,
    connect: Callable[[], Syncer],
    what: str = "now",
    *,
    progress: Progress | None = None,
    wait: float = 0.0,
    timeout: float = 120.0,
) -> dict[str, dict[str, Any]]:
    """Sync now (``what``: push, pull or now), never beside another process's sync.

    With nobody holding the lease, this process takes it and runs ``what`` itself; otherwise
    the holder (a worker) is asked for a full round and its report is returned once it is done.
    The report is keyed by step, as ``Syncer.now`` returns it.
    """
    owner = new_owner(what)
    for _ in range(3):
        with holding(store, owner) as held:
            if held:
                syncer = connect()
                try:
                    if what == "push":
                        return {"push": asdict(syncer.push(progress))}
                    if what == "pull":
                        return {"pull": asdict(syncer.pull(progress, wait))}
                    return syncer.now(progress)
                finally:
                    syncer.close()
        result = _ask_holder(store, timeout)
        if result is not None:
            return result
    raise SyncError("the sync lease kept changing hands; try again")


def _ask_holder(store: Store, timeout: float) -> dict[str, dict[str, Any]] | None:
    """Ask the lease holder for a round and wait for its report (None: it let the lease go, or
    its process ended, without answering, so the caller may take the lease itself)."""
    number = store.sync_state.ask()
    deadline = time.monotonic() + timeout
    while True:
        raw, live = store.sync_state.round()
        outcome = json.loads(raw) if raw else None
        if outcome is not None and outcome["served"] >= number:  # this round or a later one
            if "error" in outcome:
                raise error_for(outcome["error"]["code"], outcome["error"]["message"])
            report: dict[str, dict[str, Any]] = outcome["report"]
            return report
        if live is None or gone(live.owner):
            return None
        if time.monotonic() > deadline:
            raise SyncError(
                f"the sync worker ({live.owner}) did not finish a round within {timeout:.0f} s; "
                "`cairn sync status` shows what it is doing"
            )
        time.sleep(0.05)
