"""Autosync: a background worker that keeps one store in sync without ever blocking its writers.

While it holds the store's lease (``cairn.sync.handoff``):

- **push** runs once local changes have been quiet for ``debounce`` seconds (or have waited
  ``max_delay``), whichever process wrote them: the worker watches the outbox, not its callers;
- **pull** runs on a second thread as a long-poll (``long_poll`` seconds) against a remote that
  supports one (the sync server), so remote changes arrive as soon as they are pushed; against
  one that does not (object storage), every ``poll_interval`` seconds;
- a transient failure (unreachable, rate limited, a server error) backs off exponentially with
  jitter from 1 s to 5 min; a permanent one (auth, key mismatch, quota, not configured) stops
  retrying until the sync configuration changes (``config_version`` returns something new)
  (``cairn.sync.backoff``);
- a round someone asked for (``handoff.sync_now``) runs on the next tick, even out of a backoff
  or after a permanent failure, and its outcome is recorded for the asker.

The status (``cairn.sync.status``) is kept in the store, so ``cairn sync status`` in another
process shows what the worker is doing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from cairn.device_store import Store
from cairn.errors import CairnError, RateLimited
from cairn.store.clock import now_ms
from cairn.sync.backoff import Backoff, classify
from cairn.sync.engine import Syncer
from cairn.sync.handoff import LEASE_TTL, claim, new_owner, served
from cairn.sync.status import WorkerStatus
from cairn.sync.trust import keyring_problem

CONTROL_THREAD = "cairn-sync"


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
            self.store.sync_state.release(self.owner)
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
                latest, asked, record = self.store.sync_state.requests()
                if self._served is None:  # a request no holder answered yet is this one's
                    self._served = served(record)
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
            if self.store.sync_state.latest_change() is None:
                return
            if self._blocked:
                return
            if not self._holding:
                self._holding = claim(self.store, self.owner, self.lease_ttl)
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
        held = claim(self.store, self.owner, self.lease_ttl)
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
        self.store.sync_state.set_round(record)

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
        letters = self.store.sync_state.dead_letters()
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
            self.store.sync_state.set_worker(record)
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
