"""Autosync: a background worker that keeps one store in sync without ever blocking its writers.

One process per store syncs at a time: the worker holds the store's lease (``store.lease``),
renewing it while it runs; a crashed owner's lease expires and another process's worker takes
over. While it holds the lease:

- **push** runs once local changes have been quiet for ``debounce`` seconds (or have waited
  ``max_delay``), whichever process wrote them: the worker watches the outbox, not its callers;
- **pull** runs on a second thread as a long-poll (``long_poll`` seconds) against the sync
  server, so remote changes arrive as soon as they are pushed;
- a transient failure (unreachable, rate limited, a server error) backs off exponentially with
  jitter from 1 s to 5 min; a permanent one (auth, key mismatch, quota, not configured) stops
  retrying until the sync configuration changes (``config_version`` returns something new).

The status (phase, reason code, message, last success) is kept in the store (``sync.worker``), so
``cairn sync status`` in another process shows what the worker is doing.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from cairn.errors import (
    AuthFailed,
    CairnError,
    ConfigError,
    CryptoError,
    Forbidden,
    RateLimited,
    RemoteUnreachable,
    SyncNotConfigured,
)
from cairn.model import iso
from cairn.service import Store
from cairn.store import lease, outbox, replica
from cairn.store.clock import now_ms
from cairn.syncing import Syncer

STATUS = "sync.worker"
PHASES = ("idle", "pushing", "pulling", "healthy", "backoff", "degraded", "disabled")
PERMANENT = (AuthFailed, Forbidden, SyncNotConfigured, ConfigError, CryptoError)
"""Failures no retry can fix (and the server's ``quota_exceeded`` code)."""


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
        return isinstance(exc, PERMANENT) or exc.code == "quota_exceeded", exc.code
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
    """Sync ``store`` in the background through the Syncer ``connect`` builds."""

    def __init__(
        self,
        store: Store,
        connect: Callable[[], Syncer],
        *,
        config_version: Callable[[], object] = lambda: None,
        debounce: float = 1.0,
        max_delay: float = 5.0,
        long_poll: float = 25.0,
        lease_ttl: float = 15.0,
        tick: float = 0.2,
        backoff: Backoff | None = None,
    ) -> None:
        self.store = store
        self._connect = connect
        self._config_version = config_version
        self.debounce, self.max_delay, self.long_poll = debounce, max_delay, long_poll
        self.lease_ttl, self.tick = lease_ttl, tick
        self.backoff = backoff or Backoff()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.status = WorkerStatus(owner=self.owner)
        self._syncer: Syncer | None = None
        self._version: object = None
        self._blocked = False  # a permanent failure: wait for the configuration to change
        self._retry_at = 0.0  # monotonic time before which nothing is tried (backoff)
        self._holding = False
        self._renew_at = 0.0  # monotonic time the lease is next taken or renewed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> Worker:
        for target, name in ((self._control, "cairn-sync"), (self._puller, "cairn-sync-pull")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop both threads, close the remote (which ends a long-poll) and give up the lease."""
        self._stop.set()
        self._wake.set()
        syncer, self._syncer = self._syncer, None
        if syncer is not None:
            syncer.close()
        for thread in self._threads:
            thread.join(timeout)
        if self._holding:
            with self.store.db.write() as conn:
                lease.release(conn, self.owner)
            self._holding = False
        self._set("idle", None, "stopped")

    def request(self) -> None:
        """Sync as soon as possible (skips the debounce and any backoff wait)."""
        self._retry_at = 0.0
        self._wake.set()

    # --- the control thread: lease, push, failures --------------------------------------------

    def _control(self) -> None:
        seen: int | None = None
        changed_at = first_pending = 0.0
        while not self._stop.is_set():
            try:
                if not self._lease():
                    self._sleep(self.lease_ttl / 3)
                    continue
                if not self._ready():
                    self._sleep(self.tick)
                    continue
                with self.store.db.read() as conn:
                    latest = outbox.latest(conn)
                now = time.monotonic()
                if latest != seen:
                    seen, changed_at = latest, now
                pending = latest is not None
                if not pending:
                    first_pending = 0.0
                elif not first_pending:
                    first_pending = now
                due = pending and (
                    now - changed_at >= self.debounce
                    or now - first_pending >= self.max_delay
                    or self._wake.is_set()
                )
                if due:
                    self._wake.clear()
                    self._push()
                    first_pending = 0.0
                self._sleep(self.tick)
            except Exception as exc:  # noqa: BLE001 - a worker must outlive any one failure
                self._failed(exc)

    def _lease(self) -> bool:
        """Whether this worker holds the lease; taken or renewed a third of its time ahead of
        expiry (a write transaction each time, so not on every tick)."""
        if time.monotonic() < self._renew_at:
            return self._holding
        with self.store.db.write() as conn:
            held = lease.acquire(conn, self.owner, now_ms(), int(self.lease_ttl * 1000))
        if not held and self.status.phase != "idle":
            self._set("idle", "other_worker", "another process syncs this store")
        self._holding = held
        self._renew_at = time.monotonic() + self.lease_ttl / 3
        return held

    def _ready(self) -> bool:
        """Connected, not blocked by a permanent failure, not waiting out a backoff."""
        version = self._config_version()
        if self._blocked:
            if version == self._version:
                return False
            self._blocked = False  # the configuration changed: try again
            self.backoff.reset()
            stale, self._syncer = self._syncer, None
            if stale is not None:
                stale.close()
        if time.monotonic() < self._retry_at:
            return False
        if self._syncer is None:
            self._version = version
            self._syncer = self._connect()
            self._set("healthy", None, "connected")
        return True

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
            try:
                report = syncer.pull(wait=self.long_poll)
            except Exception as exc:  # noqa: BLE001
                if self._stop.is_set():
                    return
                self._failed(exc)
                continue
            if report.received:
                self._succeeded(f"pulled {report.applied}", 0)
            elif self.status.phase in ("backoff", "idle"):
                self._succeeded("remote reachable", 0)

    # --- status ---------------------------------------------------------------------------------

    def _succeeded(self, what: str, dead_lettered: int) -> None:
        self.backoff.reset()
        self._retry_at = 0.0
        self.status.last_success_at = now_ms()
        with self.store.db.read() as conn:
            dead = len(outbox.dead_letters(conn))
        if dead or dead_lettered:
            self._set(
                "degraded",
                "dead_letter",
                f"{what}; {dead} change(s) refused, see `cairn sync dead-letters`",
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

    def _set(self, phase: str, reason: str | None, message: str) -> None:
        with self._lock:
            if phase != "backoff":
                self.status.retry_at = None
            self.status.phase, self.status.reason, self.status.message = phase, reason, message
            self.status.updated_at = now_ms()
            record = json.dumps(asdict(self.status))
        try:
            with self.store.db.write() as conn:
                replica.set_meta(conn, STATUS, record)
        except CairnError:
            pass  # the status is advisory; a busy store must not take the worker down

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(max(0.0, seconds))


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
