"""News between server processes (and hosts) over one PostgreSQL database: LISTEN/NOTIFY.

Each process keeps two connections of its own, outside the request pool, on its event loop: one
LISTENs on ``CHANNEL`` and wakes the waiters of the workspace named by each notification; the
other NOTIFYs, right after a push commits, every workspace that gained mutations since its last
statement (a burst goes in one round trip). A lost connection is opened again; once listening
again the process wakes every waiter, since news may have passed meanwhile. Until then, and if
a notification is lost anyway, the long-polls' periodic re-check still finds the news.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import psycopg

from cairn.server.notify import Notifier

CHANNEL = "cairn_push"
RECONNECT = (0.2, 0.5, 1.0, 2.0, 5.0)
"""Seconds before each try to connect again; the last repeats."""
STARTUP = 10.0
"""Seconds ``start`` waits to be listening before serving anyway (logged)."""
APPLICATION = "cairn-notify"
"""The ``application_name`` of both connections, to tell them apart in ``pg_stat_activity``."""
# A peer that vanished without closing (a host power cut) is noticed within about a minute.
KEEPALIVE: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}

_log = logging.getLogger("cairn.server")


class PostgresNotifier(Notifier):
    """``Notifier`` for every process serving one PostgreSQL database, on any host."""

    def __init__(self, conninfo: str) -> None:
        super().__init__()
        self._conninfo = conninfo
        self._outbox: set[str] = set()
        self._ready = asyncio.Event()
        self._listening = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sender_pid = 0
        """The backend of our own NOTIFYs: this process woke its waiters already."""

    async def start(self) -> None:
        await super().start()
        self._ready = asyncio.Event()
        self._listening = asyncio.Event()
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._send())]
        try:
            await asyncio.wait_for(self._listening.wait(), STARTUP)
        except TimeoutError:
            _log.warning(
                "not yet listening for pushes on PostgreSQL after %s s; long-polls see other "
                "processes' pushes at their periodic re-check until it connects",
                STARTUP,
            )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def _announce(self, message: str) -> None:
        self._outbox.add(message)
        self._ready.set()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, application_name=APPLICATION, **KEEPALIVE
        )

    async def _listen(self) -> None:
        """Hear every process's NOTIFY for as long as the server runs."""
        failures = 0
        while True:
            try:
                async with await self._connect() as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    if failures:
                        _log.warning("listening for pushes on PostgreSQL again")
                        self.wake_all()  # news may have passed while not listening
                    failures = 0
                    self._listening.set()
                    async for note in conn.notifies():
                        if note.pid != self._sender_pid:
                            self._heard(note.payload)
            except psycopg.Error as exc:
                self._listening.clear()
                await _pause(failures, "lost the PostgreSQL connection that hears pushes", exc)
                failures += 1

    async def _send(self) -> None:
        """NOTIFY each workspace that gained mutations, batching what gathers meanwhile."""
        failures = 0
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                ids, self._outbox = sorted(self._outbox), set()
                try:
                    if conn is None or conn.closed:
                        conn = await self._connect()
                        self._sender_pid = conn.info.backend_pid
                    await conn.execute(
                        "SELECT pg_notify(%s, id) FROM unnest(%s::text[]) AS id", (CHANNEL, ids)
                    )
                    failures = 0
                except psycopg.Error as exc:
                    self._outbox.update(ids)  # sent again once connected
                    self._ready.set()
                    if conn is not None:
                        await conn.close()
                        conn = None
                    await _pause(failures, "cannot announce pushes on PostgreSQL", exc)
                    failures += 1
        finally:
            if conn is not None:
                await conn.close()


def announce_once(conninfo: str, messages: list[str]) -> None:
    """Tell every server process of ``messages`` from a process that serves none (the CLI
    revoking a key). A failure is logged: what changed is stored, and the servers' key caches
    still drop it within their TTL."""
    try:
        with psycopg.connect(conninfo, autocommit=True, application_name=APPLICATION) as conn:
            conn.execute(
                "SELECT pg_notify(%s, m) FROM unnest(%s::text[]) AS m", (CHANNEL, messages)
            )
    except psycopg.Error as exc:
        _log.warning(
            "could not tell the running servers at once (%s); they see it within "
            "their key cache's TTL",
            str(exc).strip() or type(exc).__name__,
        )


async def _pause(failures: int, what: str, exc: psycopg.Error) -> None:
    """Log ``what`` went wrong and wait before the next try (longer after each failure)."""
    delay = RECONNECT[min(failures, len(RECONNECT) - 1)]
    _log.warning("%s (%s); again in %s s", what, str(exc).strip() or type(exc).__name__, delay)
    await asyncio.sleep(delay)
