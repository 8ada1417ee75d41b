"""Autosync: a background worker that keeps one store in sync without ever blocking its writers.

One process per store syncs at a time: the worker holds the store's lease (``store.lease``),
renewing it while it runs; a crashed owner's lease expires and another process's worker takes
over (at once when the owner was a process on this machine that no longer exists). While it
holds the lease:

- **push** runs once local changes have been quiet for ``debounce`` seconds (or have waited
  ``max_delay``), whichever process wrote them: the worker watches the outbox, not its callers;
- **pull** runs on a second thread as a long-poll (``long_poll`` seconds) against a remote that
  supports one (the sync server), so remote changes arrive as soon as they are pushed; against
  one that does not (object storage), every ``poll_interval`` seconds;
- a transient failure (unreachable, rate limited, a server error) backs off exponentially with
  jitter from 1 s to 5 min; a permanent one (auth, key mismatch, quota, not configured) stops
  retrying until the sync configuration changes (``config_version`` returns something new).

The status (phase, reason code, message, last success) is kept in the store (``sync.worker``), so
``cairn sync status`` in another process shows what the worker is doing.

A sync someone asks for (``cairn sync now``, the MCP tool ``sync_now``, ``POST /v1/sync/now``)
goes through ``sync_now``: with nobody holding the lease it takes the lease and syncs itself;
otherwise it asks the holder (``lease.ask``), whose next tick runs a full round, even out of a
backoff or after a permanent failure, and records the outcome (``sync.round``) for the asker.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from cairn.device_store import Store
from cairn.errors import (
    AuthFailed,
    CairnError,
    ConfigError,
    CryptoError,
    Forbidden,
    QuotaExceeded,
    RateLimited,
    RemoteUnreachable,
    StorageUnsupported,
    SyncError,
    SyncNotConfigured,
    error_for,
)
from cairn.model import iso
from cairn.store import lease, outbox, replica
from cairn.store.clock import now_ms
from cairn.sync.engine import Progress, Syncer
from cairn.sync.keys import keyring_problem

STATUS = "sync.worker"
ROUND = "sync.round"
"""The outcome of the latest round a worker ran because someone asked (``lease.ask``)."""
LEASE_TTL = 15.0
CONTROL_THREAD = "cairn-sync"
PHASES = ("idle", "pushing", "pulling", "healthy", "backoff", "degraded", "disabled")
PERMANENT = (
    AuthFailed,
    Forbidden,
    SyncNotConfigured,
    ConfigError,
    CryptoError,
    QuotaExceeded,
    StorageUnsupported,
)
"""Failures no retry can fix: they wait for the settings to change (or a sync asked for)."""


@dataclass
class WorkerStatus:
    phase: str = "idle"
    reason: str | None = None
    message: str = "starting"
    owner: str = ""
    last_success_at: int | None = None
    retry_at: int | None = None
    updated_at: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("last_success_at", "retry_at", "updated_at"):
            data[key] = iso(data[key]) if data[key] else None
        return data


def classify(exc: BaseException) -> tuple[bool, str]:
    """(permanent, reason code) of a failure."""
    if isinstance(exc, RemoteUnreachable):
        return False, "unreachable"
    if isinstance(exc, CairnError):
        return isinstance(exc, PERMANENT), exc.code
    return False, "internal"


class Backoff:
    """Exponential delays with jitter: 1 s, 2 s, 4 s ... up to ``cap``, each drawn from the
    upper half of its step so devices that failed together do not retry together."""

    def __init__(self, base: float = 1.0, cap: float = 300.0, rng: random.Random | None = None):
        self.base, self.cap, self.failures = base, cap, 0
        self._rng = rng or random.Random()

    def next(self, at_least: float = 0.0) -> float:
        step = min(self.cap, self.base * 2**self.failures)
        self.failures += 1
        return float(max(at_least, step * self._rng.uniform(0.5, 1.0)))

    def reset(self) -> None:
        self.failures = 0


class Worker:
    """Sync ``store`` in the background through the Syncer ``connect`` builds; ``on_status``
    hears every status change (from the worker's threads, in order)."""

    def __init__(
        self,
        store: Store,
        connect: Callable[[], Syncer],
        *,
        config_version: Callable[[], object] = lambda: None,
        debounce: float = 1.0,
        max_delay: float = 5.0,
        long_poll: float = 25.0,
        poll_interval: float = 30.0,
        lease_ttl: float = LEASE_TTL,
        tick: float = 0.2,
        backoff: Backoff | None = None,
        on_status: Callable[[WorkerStatus], None] | None = None,
    ) -> None:
        self.store = store
        self._connect = connect
        self._config_version = config_version
        self.debounce, self.max_delay, self.long_poll = debounce, max_delay, long_poll
        self.poll_interval, self.lease_ttl, self.tick = poll_interval, lease_ttl, tick
        self.backoff = backoff or Backoff()
        self._on_status = on_status
        self.owner = new_owner("worker")
        self.status = WorkerStatus(owner=self.owner)
        self._syncer: Syncer | None = None
        self._version: object = None
        self._blocked = False  # a permanent failure: wait for the configuration to change
        self._retry_at = 0.0  # monotonic time before which nothing is tried (backoff)
        self._holding = False
        self._renew_at = 0.0  # monotonic time the lease is next taken or renewed
        self._served: int | None = None  # the last request (lease.ask) answered; None: not read
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._flush = False  # push what is left before stopping (``stop(flush=...)``)
        self._threads: list[threading.Thread] = []

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> Worker:
        for target, name in ((self._control, CONTROL_THREAD), (self._puller, "cairn-sync-pull")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 10.0, flush: float = 0.0) -> None:
        """Stop both threads (a push in progress finishes), close the remote and give the
        lease back; the status says ``stopped``.

        With ``flush`` > 0, local changes still in the outbox are pushed first, for at most
        that many seconds: a process that lives for one remembered memory (an MCP client that
        makes one call and closes the server) must not leave it unsent until the next start.
        """
        self._flush = flush > 0
        self._stop.set()
        if self._flush:
            deadline = time.monotonic() + flush
            for thread in self._threads:
                if thread.name == CONTROL_THREAD:
                    _join_until(thread, deadline)
        syncer, self._syncer = self._syncer, None
        if syncer is not None:
            syncer.close()
        for thread in self._threads:
            # A push in progress finishes. A long-poll cannot be cut short, but once it answers
            # its closed Syncer applies nothing, so the puller (a daemon thread) is not waited for.
            thread.join(timeout if thread.name == CONTROL_THREAD else min(timeout, 1.0))
        held = self._holding
        if held:
            with self.store.db.write() as conn:
                lease.release(conn, self.owner)
            self._holding = False
        self._set("idle", None, "stopped", persist=held)

    # --- the control thread: lease, push, failures --------------------------------------------

    def _control(self) -> None:
        seen: int | None = None
        changed_at = first_pending = 0.0
        while not self._stop.is_set():
            try:
                if not self._lease():
                    self._served = None  # the holder answers requests meanwhile
                    self._sleep(self.lease_ttl / 3)
                    continue
                with self.store.db.read() as conn:
                    latest = outbox.latest(conn)
                    asked = lease.asked(conn)
                    if self._served is None:  # a request no holder answered yet is this one's
                        self._served = _served(conn)
                if asked > self._served:
                    self._serve(asked)
                    seen, first_pending = None, 0.0
                    continue
                if not self._ready():
                    self._sleep(self.tick)
                    continue
                now = time.monotonic()
                if latest != seen:
                    seen, changed_at = latest, now
                pending = latest is not None
                if not pending:
                    first_pending = 0.0
                elif not first_pending:
                    first_pending = now
                due = pending and (
                    now - changed_at >= self.debounce or now - first_pending >= self.max_delay
                )
                if due:
                    self._push()
                    first_pending = 0.0
                self._sleep(self.tick)
            except Exception as exc:  # noqa: BLE001 - a worker must outlive any one failure
                self._failed(exc)
        if self._flush:
            self._push_what_is_left()

    def _push_what_is_left(self) -> None:
        """On a stop with ``flush``: push what the outbox holds, now, whatever the debounce,
        unless a permanent failure stands or another process's worker holds the lease (that
        one pushes it)."""
        try:
            with self.store.db.read() as conn:
                if outbox.latest(conn) is None:
                    return
            if self._blocked:
                return
            if not self._holding:
                self._holding = _claim(self.store, self.owner, self.lease_ttl)
                if not self._holding:
                    return
            if self._syncer is None:
                self._version = self._config_version()
                self._syncer = self._connect()
            self._push()
        except Exception as exc:  # noqa: BLE001 - stopping goes on; the status says why
            self._failed(exc)

    def _lease(self) -> bool:
        """Whether this worker holds the lease; taken or renewed a third of its time ahead of
        expiry (a write transaction each time, so not on every tick)."""
        if time.monotonic() < self._renew_at:
            return self._holding
        held = _claim(self.store, self.owner, self.lease_ttl)
        self._holding = held
        if not held and self.status.reason != "other_worker":
            self._set("idle", "other_worker", "another process syncs this store; standing by")
        self._renew_at = time.monotonic() + self.lease_ttl / 3
        return held

    def _ready(self) -> bool:
        """Connected, not blocked by a permanent failure, not waiting out a backoff."""
        version = self._config_version()
        if self._blocked:
            if version == self._version:
                return False
            self._unblock()  # the configuration changed: try again
        if time.monotonic() < self._retry_at:
            return False
        if self._syncer is None:
            self._version = version
            self._syncer = self._connect()
            self._set("healthy", None, "connected")
        return True

    def _unblock(self) -> None:
        """Forget a failure and reconnect on the next try."""
        self._blocked = False
        self._retry_at = 0.0
        self.backoff.reset()
        stale, self._syncer = self._syncer, None
        if stale is not None:
            stale.close()

    def _serve(self, asked: int) -> None:
        """Run the full round someone asked for, even out of a backoff or a permanent failure
        (they may have fixed its cause where the settings do not show it), and record how it
        went for them."""
        if self._blocked or time.monotonic() < self._retry_at:
            self._unblock()
        outcome: dict[str, Any]
        try:
            self._ready()
            syncer = self._syncer
            assert syncer is not None
            self._set("pushing", None, "syncing now, as asked")
            report = syncer.now()
            dead = report["push"]["dead_lettered"] + report["push_after_pull"]["dead_lettered"]
            self._succeeded("synced as asked", dead)
            outcome = {"report": report}
        except Exception as exc:  # noqa: BLE001 - the asker gets the error, the worker goes on
            self._failed(exc)
            error = exc if isinstance(exc, CairnError) else CairnError(str(exc))
            outcome = {"error": error.to_dict()}
        self._served = asked
        record = json.dumps({"served": asked, "by": self.owner, "at": now_ms(), **outcome})
        with self.store.db.write() as conn:
            replica.set_meta(conn, ROUND, record)

    def _push(self) -> None:
        syncer = self._syncer
        assert syncer is not None
        self._set("pushing", None, "sending local changes")
        report = syncer.push()
        self._succeeded(f"pushed {report.pushed}", report.dead_lettered)

    # --- the pull thread ------------------------------------------------------------------------

    def _puller(self) -> None:
        while not self._stop.is_set():
            syncer = self._syncer
            if not self._holding or syncer is None or self._blocked:
                self._sleep(self.tick)
                continue
            if time.monotonic() < self._retry_at:
                self._sleep(min(self.tick, self._retry_at - time.monotonic()))
                continue
            long_poll = syncer.remote.supports_long_poll
            try:
                report = syncer.pull(self._pulling, wait=self.long_poll if long_poll else 0.0)
            except Exception as exc:  # noqa: BLE001
                if self._stop.is_set():
                    return
                self._failed(exc)
                continue
            if report.applied or report.failed:
                self._succeeded(f"pulled {report.applied}", 0)
            elif self.status.phase in ("backoff", "idle"):
                self._succeeded("remote reachable", 0)
            if not long_poll:
                self._sleep(self.poll_interval)

    def _pulling(self, done: int, total: int) -> None:
        if total > done:  # more pages to come: a backlog, worth showing
            self._set("pulling", None, f"receiving changes ({done} so far)")

    # --- status ---------------------------------------------------------------------------------

    def _succeeded(self, what: str, dead_lettered: int) -> None:
        self.backoff.reset()
        self._retry_at = 0.0
        self.status.last_success_at = now_ms()
        with self.store.db.read() as conn:
            letters = outbox.dead_letters(conn)
        problem = keyring_problem(self.store)
        if problem is not None:
            # Trigger: the remote's newest keyring version does not authenticate. Why: sync
            # goes on with the newest one that does (or the last good copy), but someone must
            # look. Outcome: degraded with the reason, while changes still flow.
            self._set("degraded", str(problem["reason"]), f"{what}; {problem['message']}")
        elif letters or dead_lettered:
            codes = {letter.code for letter in letters}
            # One cause (payload_too_large, revoked_key, payload_tampered...) is the reason.
            reason = codes.pop() if len(codes) == 1 else "dead_letter"
            self._set(
                "degraded",
                reason,
                f"{what}; {len(letters)} {'change' if len(letters) == 1 else 'changes'} "
                "refused or unreadable, see "
                "`cairn sync dead-letters`",
            )
        else:
            self._set("healthy", None, what)

    def _failed(self, exc: BaseException) -> None:
        permanent, reason = classify(exc)
        message = str(exc) or type(exc).__name__
        if permanent:
            self._blocked = True
            self._version = self._config_version()
            phase = "disabled" if reason == "sync_not_configured" else "degraded"
            self._set(phase, reason, f"{message} (not retried until the sync settings change)")
            return
        wait = self.backoff.next(exc.retry_after if isinstance(exc, RateLimited) else 0.0)
        self._retry_at = time.monotonic() + wait
        self.status.retry_at = now_ms() + int(wait * 1000)
        self._set("backoff", reason, f"{message} (retrying in {wait:.0f} s)")

    def _set(
        self, phase: str, reason: str | None, message: str, persist: bool | None = None
    ) -> None:
        """Change the status; the lease holder's (``persist``) is kept in the store too,
        where every process reads it (a standby worker must not overwrite it)."""
        with self._lock:
            if phase != "backoff":
                self.status.retry_at = None
            self.status.phase, self.status.reason, self.status.message = phase, reason, message
            self.status.updated_at = now_ms()
            record = json.dumps(asdict(self.status))
            if self._on_status is not None:
                self._on_status(WorkerStatus(**asdict(self.status)))
        if not (self._holding if persist is None else persist):
            return
        try:
            with self.store.db.write() as conn:
                replica.set_meta(conn, STATUS, record)
        except CairnError:
            pass  # the status is advisory; a busy store must not take the worker down

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(max(0.0, seconds))


def _join_until(thread: threading.Thread, deadline: float) -> None:
    """Wait for ``thread`` until ``deadline`` (monotonic). A second Ctrl-C or SIGTERM meanwhile
    (an MCP client escalates after its grace period) does not cut the bounded wait short."""
    while thread.is_alive() and (left := deadline - time.monotonic()) > 0:
        try:
            thread.join(left)
        except KeyboardInterrupt:
            continue


def _served(conn: sqlite3.Connection) -> int:
    """The latest request a worker answered."""
    raw = replica.get_meta(conn, ROUND)
    return int(json.loads(raw)["served"]) if raw else 0


def _claim(store: Store, owner: str, ttl: float) -> bool:
    """Take or renew the store's lease for ``ttl`` seconds; False if another owner holds it.

    Trigger: the holder is a process of this machine that no longer exists (a `cairn sync now`
    SIGKILLed mid-sync). Why: its lease would block every sync here for up to ``ttl`` more
    seconds, with nothing to say why. Outcome: the lease is taken at once."""
    now = now_ms()
    with store.db.write() as conn:
        current = lease.holder(conn, now)
        if current is not None and current.owner != owner and _gone(current.owner):
            lease.release(conn, current.owner)
        return lease.acquire(conn, owner, now, int(ttl * 1000))


def new_owner(role: str) -> str:
    """A lease owner name that says which process holds it and why."""
    return f"{socket.gethostname()}:{os.getpid()}:{role}:{uuid.uuid4().hex[:8]}"


def _gone(owner: str) -> bool:
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
    if not _claim(store, owner, ttl):
        yield False
        return
    done = threading.Event()

    def renew() -> None:
        while not done.wait(ttl / 3):
            try:
                _claim(store, owner, ttl)
            except CairnError:
                pass  # a busy store: the next try is a third of the lease away

    renewer = threading.Thread(target=renew, name="cairn-sync-lease", daemon=True)
    renewer.start()
    try:
        yield True
    finally:
        done.set()
        renewer.join()
        with store.db.write() as conn:
            lease.release(conn, owner)


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
    with store.db.write() as conn:
        number = lease.ask(conn)
    deadline = time.monotonic() + timeout
    while True:
        with store.db.read() as conn:
            raw = replica.get_meta(conn, ROUND)
            live = lease.holder(conn, now_ms())
        outcome = json.loads(raw) if raw else None
        if outcome is not None and outcome["served"] >= number:  # this round or a later one
            if "error" in outcome:
                raise error_for(outcome["error"]["code"], outcome["error"]["message"])
            report: dict[str, dict[str, Any]] = outcome["report"]
            return report
        if live is None or _gone(live.owner):
            return None
        if time.monotonic() > deadline:
            raise SyncError(
                f"the sync worker ({live.owner}) did not finish a round within {timeout:.0f} s; "
                "`cairn sync status` shows what it is doing"
            )
        time.sleep(0.05)


def read_status(store: Store) -> dict[str, Any]:
    """What the store's sync worker last reported, whether it still holds the lease, and the
    pending and dead-letter counts (for ``cairn sync status`` in any process)."""
    with store.db.read() as conn:
        raw = replica.get_meta(conn, STATUS)
        live = lease.holder(conn, now_ms())
        pending = outbox.count(conn)
        dead = len(outbox.dead_letters(conn))
    status = WorkerStatus(**json.loads(raw)) if raw else WorkerStatus(message="no worker has run")
    running = live is not None and live.owner == status.owner
    data = status.to_dict()
    if not running and status.phase != "disabled":
        data.update(phase="idle", message="no sync worker is running for this store")
    return {**data, "worker_running": running, "pending": pending, "dead_letters": dead}
