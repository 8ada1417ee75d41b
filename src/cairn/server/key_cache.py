"""API keys kept in memory per server process, so a request costs no database read to authenticate.

A key found once is kept; a revocation drops it at once in the process that made it, and in
the others when the notifier brings the news (``Notifier.announce_key``: a datagram or a NOTIFY,
milliseconds). As a safety net for news that never arrives (a notification lost, a row changed
by hand), every ``ttl`` seconds one statement reads every kept key again and drops those revoked
or gone. A key that is not found is not kept: one created a moment ago in another process works
at once. At most ``capacity`` keys are kept (the least recently used is dropped first).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict

from cairn.errors import CairnError
from cairn.server.storage import ApiKey, ServerStorage

CAPACITY = 100_000
"""Keys kept at most per process (a few hundred bytes each)."""

_log = logging.getLogger("cairn.server")


class KeyCache:
    """``find_key`` over ``storage``, answered from memory while the key is live; thread-safe.

    ``ttl`` 0 turns the cache off: every lookup reads the database.
    """

    def __init__(self, storage: ServerStorage, ttl: float, capacity: int = CAPACITY) -> None:
        self.storage = storage
        self.ttl = ttl
        self.capacity = max(capacity, 1)
        self._keys: OrderedDict[str, ApiKey] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0
        """Counts the drops: a lookup that raced one does not keep what it read."""

    def find_key(self, key_id: str) -> ApiKey | None:
        """The key with this id (revoked or not), from memory when it is kept."""
        with self._lock:
            key = self._keys.get(key_id)
            if key is not None:
                self._keys.move_to_end(key_id)
                return key
            generation = self._generation
        key = self.storage.find_key(key_id)
        if key is not None and key.revoked_at is None and self.ttl > 0:
            self._keep([key], generation)
        return key

    def forget(self, key_id: str | None) -> None:
        """Drop ``key_id`` (None: every key), so its next use reads the database."""
        with self._lock:
            self._generation += 1
            if key_id is None:
                self._keys.clear()
            else:
                self._keys.pop(key_id, None)

    def refresh(self) -> None:
        """Read every kept key again in one statement; drop the revoked and the gone."""
        with self._lock:
            ids = list(self._keys)
            generation = self._generation
        if not ids:
            return
        found = self.storage.find_keys(ids)
        with self._lock:
            for key_id in ids:
                key = found.get(key_id)
                if key is None or key.revoked_at is not None:
                    self._keys.pop(key_id, None)
                elif key_id in self._keys and generation == self._generation:
                    self._keys[key_id] = key  # (after a drop, what was read may be stale)

    async def run(self) -> None:
        """Refresh every ``ttl`` seconds until cancelled (the app runs this while it serves)."""
        if self.ttl <= 0:
            return
        while True:
            await asyncio.sleep(self.ttl)
            try:
                await asyncio.to_thread(self.refresh)
            except CairnError as exc:  # the database is away: keep what is kept, try again
                _log.warning("could not re-read the cached API keys: %s", exc)

    def __len__(self) -> int:
        return len(self._keys)

    def _keep(self, found: list[ApiKey], generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return  # dropped while it was read: what was read may be stale
            for key in found:
                self._keys[key.id] = key
                self._keys.move_to_end(key.id)
            while len(self._keys) > self.capacity:
                self._keys.popitem(last=False)
