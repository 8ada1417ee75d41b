"""In-process news of pushes, so a long-poll wakes as soon as its workspace gains mutations."""

from __future__ import annotations

import asyncio
import contextlib


class Notifier:
    """One event per workspace with waiters, set (and replaced) by each push.

    Used only on the server's event loop. A waiter takes its event *before* it reads the
    database, so a push that commits after the read still wakes it.
    """

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def subscribe(self, workspace_id: str) -> asyncio.Event:
        """The event the next push to ``workspace_id`` sets."""
        return self._events.setdefault(workspace_id, asyncio.Event())

    def notify(self, workspace_id: str) -> None:
        event = self._events.pop(workspace_id, None)
        if event is not None:
            event.set()

    @staticmethod
    async def wait(event: asyncio.Event, timeout: float) -> None:
        """Until ``event`` is set or ``timeout`` seconds pass, whichever is first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
