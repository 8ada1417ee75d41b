"""News of pushes for waiting long-polls: fanned out in this process, announced to the others.

``Notifier`` is the one interface; ``cairn.server.backends`` picks the implementation by storage:
``UnixNotifier`` (embedded SQLite: a datagram socket per process in a folder beside the database)
or ``PostgresNotifier`` (LISTEN/NOTIFY, so it reaches other hosts too). ``Notifier`` itself only
wakes the long-polls of its own process (an app built without a backend, as in tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable


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
        self.waiting = 0
        """Long-polls of this process waiting right now (a metrics gauge)."""

    async def start(self) -> None:
        """Bind to the running event loop; subclasses also start hearing other processes."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()

    async def stop(self) -> None:
        """Stop hearing other processes (nothing to stop here)."""

    def subscribe(self, workspace_id: str) -> asyncio.Event:
        """The event the next news of ``workspace_id`` sets."""
        return self._events.setdefault(workspace_id, asyncio.Event())

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
        event = self._events.pop(workspace_id, None)
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        """Wake every waiter of this process (on the loop): news may have been missed, so each
        reads the database once more."""
        events, self._events = self._events, {}
        for event in events.values():
            event.set()

    def _news(self, workspace_id: str) -> None:
        self.wake(workspace_id)
        self._announce(workspace_id)

    def _announce(self, workspace_id: str) -> None:
        """Tell the other processes (on the loop); nobody else to tell here."""

    def _on_loop(self, call: Callable[[str], None], workspace_id: str) -> None:
        loop = self._loop
        if loop is None or threading.get_ident() == self._thread:
            call(workspace_id)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(call, workspace_id)
