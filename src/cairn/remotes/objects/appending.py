"""Appending a device's mutations to its log in an object remote: numbered, put-if-absent, once."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from obstore.exceptions import AlreadyExistsError

from cairn.protocol import WireMutation
from cairn.remotes.objects.blobs import Blobs
from cairn.remotes.objects.cursors import DeviceRecords
from cairn.remotes.objects.format import batch_path, pack
from cairn.remotes.objects.logs import Gap, Logs
from cairn.remotes.objects.probe import WriteCheck
from cairn.remotes.objects.snapshots import Snapshots

_RECENT = 8  # a device's latest batches a push checks its mutations against


class Appender:
    """Writes each device's batches as ``log/<device>/<n>``, numbered 1, 2, 3 ... without gaps,
    each once (put-if-absent): an upload cut short leaves no object or a whole one."""

    def __init__(
        self,
        blobs: Blobs,
        logs: Logs,
        snapshots: Snapshots,
        records: DeviceRecords,
        writes: WriteCheck,
    ) -> None:
        self.blobs = blobs
        self.logs = logs
        self.snapshots = snapshots
        self.records = records
        self.writes = writes
        self._lock = threading.Lock()
        self._own: dict[str, set[str]] = {}  # a device's stored mutation ids (idempotent pushes)
        self._next: dict[str, int] = {}  # a device's next batch number

    def append(self, device: str, mutations: Sequence[WireMutation]) -> list[WireMutation]:
        """Store the mutations the device's log does not hold yet; returns those stored."""
        with self._lock:
            own = self._own_ids(device)
            fresh: list[WireMutation] = []
            seen: set[str] = set()
            for mutation in mutations:
                if mutation.mutation_id not in own and mutation.mutation_id not in seen:
                    seen.add(mutation.mutation_id)
                    fresh.append(mutation)
            return self._write_batch(device, fresh)

    def _own_ids(self, device: str) -> set[str]:
        """The mutation ids of the device's latest batches, read once (under the lock): a push
        whose acknowledgement was lost is retried before anything else, so its batch is among
        them and is not stored twice. The log is listed before the snapshot's manifest is read:
        a compaction writes its snapshot before it removes batches, so a batch number is never
        handed out twice."""
        if device not in self._own:
            for attempt in range(3):
                names = self.logs.batch_names(device)
                snapshot = self.snapshots.latest(refresh=True)
                covered = snapshot.covers.get(device, 0) if snapshot else 0
                recent = [n for n in names if int(n) > covered][-_RECENT:]
                try:
                    ids = {m.mutation_id for n in recent for m in self.logs.batch(device, n)}
                except Gap:  # a compaction removed them since: list again
                    if attempt == 2:
                        raise
                    continue
                self._own[device] = ids
                read_up_to = self.records.read_up_to(device)
                self._next[device] = max([covered, read_up_to, *map(int, names)]) + 1
                break
        return self._own[device]

    def _write_batch(self, device: str, batch: list[WireMutation]) -> list[WireMutation]:
        """Store ``batch`` as the device's next batch; returns what was stored (less, when
        another process of this device stored some of it first)."""
        self.writes.before_write()
        while batch:
            path = batch_path(device, self._next[device])
            try:
                self.blobs.put(path, self.blobs.seal(path, pack(batch)), create=True)
            except AlreadyExistsError:
                # Another process of this device wrote that number first: reread and go on.
                del self._own[device]
                own = self._own_ids(device)
                batch = [m for m in batch if m.mutation_id not in own]
                continue
            self._next[device] += 1
            self.logs.remember(path, batch)
            self._own[device].update(m.mutation_id for m in batch)
            return batch
        return []
