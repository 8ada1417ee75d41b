"""News of pushes for waiting long-polls: fanned out in this process, announced to the others.

``Notifier`` is the one interface; ``cairn.server.backends`` picks the implementation by storage:
``UnixNotifier`` (embedded SQLite: a datagram socket per process in a folder beside the database)
or ``PostgresNotifier`` (LISTEN/NOTIFY, so it reaches other hosts too). ``Notifier`` itself only
wakes the long-polls of its own process (an app built without a backend, as in tests).

The same path carries news of API keys (``KEYS`` + a key id, or ``ALL_KEYS``): a key revoked in
one process is dropped from the key caches of the others (``cairn.server.key_cache``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

KEYS = "key:"
"""The prefix of a message naming an API key that changed (never a workspace id: those are
UUIDs)."""
ALL_KEYS = KEYS + "*"
"""The message that every API key may have changed (a workspace deleted with its keys)."""


class Notifier:
    """One event per workspace with waiters, set (and replaced) by news of a push.

    A waiter takes its event *before* it reads the database, so a push that commits after the
    read still wakes it. ``notify`` may be called from any thread (the hosted routes run in the
    thread pool); events are only touched on the server's event loop. Waiting holds no thread and
    no database connection: it is an ``asyncio.Event`` on the loop.
    """

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._known: dict[str, tuple[int, asyncio.Event]] = {}
        self.waiting = 0
        """Long-polls of this process waiting right now (a metrics gauge)."""
        self.keys_changed: Callable[[str | None], None] = lambda key_id: None
        """Called (on the loop) with a key id another process announced changed, or None when
        any may have (news may have been missed); the key cache drops them."""

    async def start(self) -> None:
        """Bind to the running event loop; subclasses also start hearing other processes."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()

    async def stop(self) -> None:
        """Stop hearing other processes (nothing to stop here)."""

    def subscribe(self, workspace_id: str) -> asyncio.Event:
        """The event the next news of ``workspace_id`` sets."""
        return self._events.setdefault(workspace_id, asyncio.Event())

    def remember(self, workspace_id: str, latest: int, event: asyncio.Event) -> None:
        """A read that began after ``event = subscribe(workspace_id)`` found ``latest`` as the
        workspace's last seq (on the loop). Until news of the workspace sets that event, a
        long-poll at ``latest`` may skip its first read: any later push sets it."""
        if not event.is_set() and self._events.get(workspace_id) is event:
            self._known[workspace_id] = (latest, event)

    def known_latest(self, workspace_id: str, event: asyncio.Event) -> int | None:
        """The workspace's last seq as this process knows it while ``event`` (the one
        ``subscribe`` just gave) is unset, or None: a long-poll must read (on the loop)."""
        known = self._known.get(workspace_id)
        if known is None or known[1] is not event or event.is_set():
            return None
        return known[0]

    def announce_key(self, key_id: str) -> None:
        """API key ``key_id`` changed (revoked): tell the other processes, whose key caches
        drop it. Any thread; this process's own cache is the caller's to update."""
        self._on_loop(self._announce, KEYS + key_id)

    def notify(self, workspace_id: str) -> None:
        """``workspace_id`` gained mutations (committed): wake its waiters here and tell the
        other processes. Any thread."""
        self._on_loop(self._news, workspace_id)

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        """Until ``event`` is set or ``timeout`` seconds pass; whether it was set."""
        self.waiting += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        finally:
            self.waiting -= 1
        return event.is_set()

    def wake(self, workspace_id: str) -> None:
        """Wake this process's waiters on ``workspace_id`` (on the loop)."""
        self._known.pop(workspace_id, None)
        event = self._events.pop(workspace_id, None)
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        """Wake every waiter of this process and forget every cached key (on the loop): news
        may have been missed, so each waiter reads the database once more, and each key too."""
        events, self._events = self._events, {}
        self._known.clear()
        for event in events.values():
            event.set()
        self.keys_changed(None)

    def _heard(self, message: str) -> None:
        """A message from another process (on the loop): a key that changed, or a workspace
        that gained mutations."""
        if message == ALL_KEYS:
            self.keys_changed(None)
        elif message.startswith(KEYS):
            self.keys_changed(message.removeprefix(KEYS))
        else:
            self.wake(message)

    def _news(self, workspace_id: str) -> None:
        self.wake(workspace_id)
        self._announce(workspace_id)

    def _announce(self, message: str) -> None:
        """Tell the other processes ``message`` (a workspace id or a key's; on the loop);
        nobody else to tell here."""

    def _on_loop(self, call: Callable[[str], None], workspace_id: str) -> None:
        loop = self._loop
        if loop is None or threading.get_ident() == self._thread:
            call(workspace_id)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(call, workspace_id)
