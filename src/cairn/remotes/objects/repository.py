"""The object remote: the ``Remote`` interface over a bucket's or folder's logs and snapshots."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from cairn import binary_pages
from cairn.errors import AuthFailed, Forbidden, InvalidInput
from cairn.protocol import (
    KeyringBlob,
    KeyringProof,
    PullPage,
    PushResult,
    WireMutation,
    check_batch,
    check_pull_limit,
)
from cairn.remotes.base import KEYRING_WALK, Frames, KeyringCheck
from cairn.remotes.objects import compaction, reading
from cairn.remotes.objects.appending import Appender
from cairn.remotes.objects.blobs import Blobs
from cairn.remotes.objects.compaction import LOCK_TTL, STALE_AFTER
from cairn.remotes.objects.cursors import PUBLISH_EVERY, DeviceRecords, read_cursor
from cairn.remotes.objects.format import FORMAT
from cairn.remotes.objects.keyrings import Keyrings
from cairn.remotes.objects.logs import Gap, Logs
from cairn.remotes.objects.probe import WriteCheck
from cairn.remotes.objects.snapshots import Snapshots


class ObjectRemote:
    """Sync through an obstore store (S3Store, LocalStore, MemoryStore)."""

    def __init__(
        self,
        store: Any,
        url: str,
        device_id: str | None = None,
        frames: Frames | None = None,
        poll_every: float = 0.5,
        publish_every: float = PUBLISH_EVERY,
    ) -> None:
        self._blobs = Blobs(store, url, frames)
        self.poll_every = poll_every
        self.publish_every = publish_every
        self._writes = WriteCheck(self._blobs)
        self._logs = Logs(self._blobs)
        self._snapshots = Snapshots(self._blobs)
        self._records = DeviceRecords(self._blobs, device_id)
        self._keyrings = Keyrings(self._blobs, self._writes)
        self._appender = Appender(
            self._blobs, self._logs, self._snapshots, self._records, self._writes
        )

    @property
    def url(self) -> str:
        return self._blobs.url

    @property
    def device_id(self) -> str | None:
        return self._records.device_id

    @property
    def frames(self) -> Frames | None:
        """Seals batches, device records and snapshots; set once the workspace's keys are open."""
        return self._blobs.frames

    @property
    def skipped(self) -> dict[str, str]:
        """Objects that did not open (never applied), with why."""
        return self._blobs.skipped

    @property
    def supports_long_poll(self) -> bool:
        return False

    def set_frames(self, frames: Frames) -> None:
        self._blobs.frames = frames

    def set_keyring_check(self, check: KeyringCheck) -> None:
        self._keyrings.set_check(check)

    def push_size(self, mutation: WireMutation) -> int:
        """A batch object holds payloads raw and ids packed, much as the binary form does."""
        return binary_pages.packed_size(mutation)

    def push(self, mutations: Sequence[WireMutation]) -> PushResult:
        check_batch(mutations, True, self._keyrings.revoked())
        devices = {m.device_id for m in mutations}
        device = self.device_id or (next(iter(devices)) if devices else None)
        if device is None:
            return PushResult(0, 0, 0)
        if devices - {device}:
            raise InvalidInput(f"a push to {self.url} carries one device's mutations")
        stored = self._appender.append(device, mutations)
        return PushResult(len(stored), len(mutations) - len(stored), 0)

    def pull(
        self,
        cursor: str | None,
        limit: int = 1000,
        scopes: Sequence[str] | None = None,
        wait: float = 0.0,
    ) -> PullPage:
        check_pull_limit(limit)
        position, count = read_cursor(cursor)
        if cursor is not None:
            self._records.publish(cursor, position, self.publish_every)
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            page = reading.page(self._logs, self._snapshots, position, count, limit, scopes)
            if page.mutations or page.has_more or time.monotonic() >= deadline:
                return page
            time.sleep(min(self.poll_every, max(0.0, deadline - time.monotonic())))

    def get_keyring(self) -> KeyringBlob | None:
        return self._keyrings.latest()

    def keyring_versions(self, limit: int = KEYRING_WALK) -> list[KeyringBlob]:
        return self._keyrings.versions(limit)

    def put_keyring(
        self,
        blob: bytes,
        expected_version: int | None,
        revoked: Sequence[int] = (),
        proof: KeyringProof | None = None,
    ) -> int:
        return self._keyrings.put(blob, expected_version, revoked, proof)

    def register_device(self, device_id: str, name: str) -> None:
        self._writes.before_write()
        self._records.register(device_id, name)

    def unregister_device(self, device_id: str) -> None:
        self._writes.before_write()
        self._records.remove(device_id)

    def devices(self) -> dict[str, str]:
        """Each device's name, from its record (sealed: the keys must be open); a record that
        does not open is left out (and listed under ``skipped_objects``)."""
        return self._records.names()

    def mark_read(self, cursor: str) -> None:
        """This device has applied everything up to ``cursor``: record it at once (a sync that
        ends here leaves nothing for the next one to write)."""
        self._records.publish(cursor, read_cursor(cursor)[0], self.publish_every, force=True)

    def probe(self) -> None:
        """Check that the storage honours put-if-absent (``WriteCheck.probe``)."""
        self._writes.probe()

    def status(self) -> dict[str, Any]:
        """What the remote holds; before the keys are open (``cairn sync setup`` checking the
        remote) only what object names tell."""
        devices = self._blobs.names("devices/")
        try:
            self.probe()
            conditional = "honoured"
        except (AuthFailed, Forbidden):
            conditional = "unchecked (no write access)"
        if self.frames is None:
            return {
                "remote": self.url,
                "mode": "e2e",
                "format": FORMAT,
                "devices": len(devices),
                "conditional_writes": conditional,
            }
        for attempt in range(3):
            snapshot = self._snapshots.latest(refresh=True)
            covers = snapshot.covers if snapshot else {}
            mutations = snapshot.mutations if snapshot else 0
            batches = 0
            try:
                for device in self._logs.devices():
                    for name in self._logs.batch_names(device, after=covers.get(device, 0)):
                        batches += 1
                        mutations += len(self._logs.batch(device, name))
            except Gap:  # a compaction removed batches since they were listed: count again
                if attempt == 2:
                    raise
                continue
            break
        return {
            "remote": self.url,
            "mode": "e2e",
            "format": FORMAT,
            "latest_seq": mutations,
            "mutations": mutations,
            "devices": len(devices),
            "batches": batches,
            "snapshot": snapshot.number if snapshot else None,
            "skipped_objects": dict(self._blobs.skipped),
            "missing_objects": dict(self._blobs.missing),
            "conditional_writes": conditional,
        }

    def compact(
        self,
        stale_after: float = STALE_AFTER,
        lock_ttl: float = LOCK_TTL,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Write a snapshot of every log as it is now, then remove the batches it covers that
        every device (that read within ``stale_after`` seconds) has read past, and the earlier
        snapshots. Runs under ``compact.lock``; raises RemoteConflict while another holds it."""
        self._writes.before_write()
        return compaction.compact(
            self._logs,
            self._snapshots,
            self._records,
            stale_after,
            lock_ttl,
            progress or (lambda _s, _d, _t: None),
        )

    def close(self) -> None:
        return None
