"""Last-seen bookkeeping: when each API key was last used and each device last pulled, batched.

Requests note what they see in memory (``key_used``, ``device_pulled``); ``flush`` writes all of
it in one transaction, one statement per table (``ServerStorage.record_seen``). What is new to
this process (a key or device it has not written yet) is written within ``FIRST`` seconds, so a
new device shows in the lists at once; after that, at most every ``interval`` seconds. The
database thus sees one write per process per interval, however many devices wait on it, where
it saw one per device. A stopping server flushes what is left; a crash loses at most one
interval of these times, never anything a device sent.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict

from cairn.errors import CairnError
from cairn.server.storage import ServerStorage

FIRST = 1.0
"""Seconds within which a key or device new to this process is written."""
CAPACITY = 100_000
"""Keys and devices remembered at most (what is pending, and what was written)."""

_log = logging.getLogger("cairn.server")

Seen = tuple[str, str]
"""(workspace id, key or device id)."""
Sighting = tuple[int, int | None]
"""(when, Unix ms; a device's read position: the cursor it pulled after)."""


class LastSeen:
    """Sightings gathered in memory and written in batches (see the module); thread-safe."""

    def __init__(self, storage: ServerStorage, interval: float, capacity: int = CAPACITY) -> None:
        self.storage = storage
        self.interval = interval
        self.capacity = max(capacity, 1)
        self._keys: dict[Seen, Sighting] = {}
        self._devices: dict[Seen, Sighting] = {}
        self._written: OrderedDict[tuple[str, Seen], None] = OrderedDict()
        self._fresh = False
        """Something new to this process is waiting (so the next tick writes it)."""
        self._flushed = time.monotonic()
        self._lock = threading.Lock()

    def key_used(self, workspace_id: str, key_id: str, at: int) -> None:
        """API key ``key_id`` authenticated a request at ``at`` (Unix ms)."""
        self._note(self._keys, "key", (workspace_id, key_id), (at, None))

    def device_pulled(
        self, workspace_id: str, device_id: str, at: int, position: int | None = None
    ) -> None:
        """Device ``device_id`` pulled at ``at`` (Unix ms) after the cursor ``position`` (its
        read position, what log retention waits for); an unknown device is added."""
        self._note(self._devices, "device", (workspace_id, device_id), (at, position))

    def forget_device(self, workspace_id: str, device_id: str) -> None:
        """A device removed from its workspace: its sighting waiting here is dropped, so the
        next flush does not add it back. (One waiting in another worker process still can,
        until that device's record is removed again.)"""
        with self._lock:
            self._devices.pop((workspace_id, device_id), None)

    def due(self) -> bool:
        """Whether a flush has something to write now."""
        with self._lock:
            waiting = bool(self._keys or self._devices)
            return self._fresh or (waiting and time.monotonic() - self._flushed >= self.interval)

    def flush(self) -> None:
        """Write every pending sighting (one transaction); kept for the next try on failure."""
        with self._lock:
            keys, self._keys = self._keys, {}
            devices, self._devices = self._devices, {}
            self._fresh = False
            self._flushed = time.monotonic()
        if not keys and not devices:
            return
        try:
            self.storage.record_seen(
                [(*seen, at) for seen, (at, _) in keys.items()],
                [(*seen, at, position) for seen, (at, position) in devices.items()],
            )
        except CairnError:
            with self._lock:  # the later time of each wins
                for pending, failed in ((self._keys, keys), (self._devices, devices)):
                    for seen, sighting in failed.items():
                        pending[seen] = _later(sighting, pending.get(seen))
            raise
        with self._lock:
            for kind, written in (("key", keys), ("device", devices)):
                for seen in written:
                    self._written[(kind, seen)] = None
                    self._written.move_to_end((kind, seen))
            while len(self._written) > self.capacity:
                self._written.popitem(last=False)

    async def run(self) -> None:
        """Flush whenever due, checking every ``FIRST`` seconds, until cancelled (the app runs
        this while it serves, then flushes once more)."""
        while True:
            await asyncio.sleep(FIRST)
            if not self.due():
                continue
            try:
                await asyncio.to_thread(self.flush)
            except CairnError as exc:  # the database is away: the times wait for the next try
                _log.warning("could not record when keys and devices were last seen: %s", exc)

    def close(self) -> None:
        """The last flush, as the server stops (a failure is logged: nothing is left to retry)."""
        try:
            self.flush()
        except CairnError as exc:
            _log.warning("could not record when keys and devices were last seen: %s", exc)

    def _note(
        self, pending: dict[Seen, Sighting], kind: str, seen: Seen, sighting: Sighting
    ) -> None:
        with self._lock:
            if seen not in pending and len(pending) >= self.capacity:
                self._fresh = True  # full: write soon; this sighting is dropped
                return
            pending[seen] = _later(sighting, pending.get(seen))
            if (kind, seen) not in self._written:
                self._fresh = True


def _later(sighting: Sighting, held: Sighting | None) -> Sighting:
    """The later of two sightings of one key or device (the newer pull's read position)."""
    return sighting if held is None or sighting[0] >= held[0] else held
