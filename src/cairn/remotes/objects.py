"""A remote made of objects in storage the user owns: an S3 (or S3-compatible) bucket or a folder.

There is no server: every device reads and writes the objects directly (through ``obstore``,
which signs S3 requests and does put-if-absent natively). The layout, under the remote's prefix:

- ``cairn.json``: the format version (a newer one is refused, never misread);
- ``keyring/<version>``: one object per keyring version (the opaque blob, the revoked key ids
  and the proof, signed for that number); a new version is written only if absent and only over
  the latest, which makes the keyring's compare-and-swap. Anyone who may write to the storage
  can write one too: devices use only versions the workspace's keys authenticate, and push
  checks revoked key ids against the newest such version only (``set_keyring_check``);
- ``probes/<token>``: written twice and removed (``probe``) before the first write of a process,
  once a day after, and on every status: storage that lets the second put-if-absent through
  (ignoring ``If-None-Match``) is refused, since devices would overwrite each other's objects;
- ``log/<device>/<n>``: immutable batches, each written once, put-if-absent, by its own device
  (numbered 1, 2, 3 ... without gaps); an upload cut short leaves no object or a whole one;
- ``devices/<device>``: each device's record (its name, and how far it has read every log),
  written by that device only;
- ``snapshots/<n>`` and ``snapshots/<n>-<token>/<part>``: what ``compact`` wrote: every
  mutation of the logs up to a version vector (``covers``), in a few large parts, so a new
  device does not fetch the history batch by batch; the batches it covers that every device has
  read are then removed;
- ``compact.lock``: held while a compaction runs, taken over once stale.

A reader's cursor is a version vector: for each device, the batch and the position in it that it
has read up to, so a batch written later is never skipped. A reader that is behind a snapshot
reads that device's part of it from its position on. Batches, device records and snapshots are
framed: compressed, then sealed by the workspace's ``Frames`` (AES-256-GCM bound to the object's
name), so object names and sizes are all the bucket learns. An object that fails to open is
skipped and listed in ``status()["skipped_objects"]``, never applied; a batch that is missing
from the middle of a log (a synced folder that has not caught up) holds that log back until it
arrives, and is listed in ``status()["missing_objects"]``.

A bucket cannot hold a request open, so ``supports_long_poll`` is False: ``pull(wait=...)`` polls
every ``poll_every`` seconds, and a background worker pulls by interval instead.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import re
import secrets
import struct
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

import obstore
from obstore.exceptions import AlreadyExistsError, PermissionDeniedError, UnauthenticatedError

from cairn import keyring_rules
from cairn.errors import (
    AuthFailed,
    CryptoError,
    Forbidden,
    InvalidInput,
    RemoteConflict,
    RemoteUnreachable,
    SchemaTooNew,
    StorageUnsupported,
    SyncError,
    SyncNotConfigured,
)
from cairn.protocol import (
    KeyringBlob,
    KeyringProof,
    PullPage,
    PushResult,
    WireMutation,
    check_batch,
    check_pull_limit,
    problem,
)
from cairn.remotes.base import KEYRING_WALK, Frames, KeyringCheck

FORMAT = 1
HEADER = "cairn.json"
LOCK = "compact.lock"
FRAME = b"CAO1"
LOCK_TTL = 600.0
"""Seconds after which a compaction's lock is stale (its holder died) and may be taken over."""
STALE_AFTER = 30 * 86400.0
"""A device that has not read for this long no longer holds batches back from compaction (it
reads the snapshot instead when it returns)."""
KEYRING_TTL = 10.0
"""Seconds a push trusts the keyring's revoked key ids it read (each push would read it again)."""
PROBE_EVERY = 86400.0
"""Seconds after which a long-running process checks put-if-absent again before a write."""
PUBLISH_EVERY = 5.0
"""Seconds between two writes of a device's read position to its record."""
PART_SIZE = 5000  # mutations per snapshot part
_NUMBER = 12  # digits in a batch's name: ordered by name as by number
_KEYRING_DIGITS = 12  # the most digits a keyring version's name may have
_CACHE = 256  # batches kept decoded (they never change)
_HEAD = struct.Struct(">I")  # the size of a packed batch's compressed fields
_RECENT = 8  # a device's latest batches a push checks its mutations against
_WHOLE = 1 << 30  # a position's index meaning "the whole batch"
MAX_INFLATED = 32 * 1024 * 1024
"""The most an object's compressed JSON may inflate to (a batch of 10,000 mutations' fields is
about 8 MiB): a compression bomb in the bucket is refused before it is in memory."""
MAX_NUMBER = 2**62
"""The largest batch number, position or count read from an object or a cursor."""
_NUMBERED = re.compile(r"[0-9]{12}")  # a batch or snapshot: _NUMBER ASCII digits (isdigit() and
# int() take any script's digits, and isdigit() some int() refuses, such as superscripts)
_KEYRING_VERSION = re.compile(r"[0-9]{8,12}")  # _KEYRING_DIGITS at most
T = TypeVar("T")


@dataclass
class Snapshot:
    """A compaction's manifest: every mutation of each device's log up to ``covers[device]``."""

    number: int
    covers: dict[str, int]
    parts: list[str]
    mutations: int
    created_at: int
    entries: dict[str, list[tuple[int, int, WireMutation]]] = field(default_factory=dict)
    """Per device, (batch, index, mutation) in log order; filled when first read."""
    loaded: bool = False


class _Gap(RemoteUnreachable):
    """A log is missing a batch it should have (removed by a compaction since it was listed, or
    not synced here yet); transient when it escapes: the next try reads the remote afresh."""

    def __init__(self, device: str, number: int) -> None:
        super().__init__(f"log/{device}/{number:0{_NUMBER}d} changed while it was read; retry")
        self.device, self.number = device, number


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
        self._store = store
        self._url = url
        self.device_id = device_id
        self.frames = frames
        """Seals batches, device records and snapshots; set once the workspace's keys are open."""
        self.poll_every = poll_every
        self.publish_every = publish_every
        self.skipped: dict[str, str] = {}
        self.missing: dict[str, str] = {}
        self._lock = threading.Lock()
        self._batches: OrderedDict[str, list[WireMutation]] = OrderedDict()
        self._own: dict[str, set[str]] = {}  # a device's stored mutation ids (idempotent pushes)
        self._next: dict[str, int] = {}  # a device's next batch number
        self._snapshot: Snapshot | None = None
        self._ring: tuple[float, KeyringBlob | None] | None = None  # (read at, keyring)
        self._snapshot_at: float | None = None  # when the latest snapshot was last looked for
        self._checked = False
        self._probed_at: float | None = None  # when put-if-absent was last seen to hold
        self._keyring_check: KeyringCheck | None = None
        self._name: str | None = None
        self._published: tuple[str, float] | None = None  # (position, when)

    @property
    def url(self) -> str:
        return self._url

    @property
    def supports_long_poll(self) -> bool:
        return False

    def set_frames(self, frames: Frames) -> None:
        self.frames = frames

    def set_keyring_check(self, check: KeyringCheck) -> None:
        self._keyring_check = check
        self._ring = None

    # --- push ---------------------------------------------------------------------------------

    def push(self, mutations: Sequence[WireMutation]) -> PushResult:
        check_batch(mutations, True, self._revoked())
        devices = {m.device_id for m in mutations}
        device = self.device_id or (next(iter(devices)) if devices else None)
        if device is None:
            return PushResult(0, 0, 0)
        if devices - {device}:
            raise InvalidInput(f"a push to {self._url} carries one device's mutations")
        with self._lock:
            own = self._own_ids(device)
            fresh: list[WireMutation] = []
            seen: set[str] = set()
            for mutation in mutations:
                if mutation.mutation_id not in own and mutation.mutation_id not in seen:
                    seen.add(mutation.mutation_id)
                    fresh.append(mutation)
            stored = self._write_batch(device, fresh)
        return PushResult(len(stored), len(mutations) - len(stored), 0)

    def _own_ids(self, device: str) -> set[str]:
        """The mutation ids of the device's latest batches, read once (under the lock): a push
        whose acknowledgement was lost is retried before anything else, so its batch is among
        them and is not stored twice. The log is listed before the snapshot's manifest is read:
        a compaction writes its snapshot before it removes batches, so a batch number is never
        handed out twice."""
        if device not in self._own:
            for attempt in range(3):
                names = self._batch_names(device)
                snapshot = self._latest_snapshot(refresh=True)
                covered = snapshot.covers.get(device, 0) if snapshot else 0
                recent = [n for n in names if int(n) > covered][-_RECENT:]
                try:
                    ids = {m.mutation_id for n in recent for m in self._batch(device, n)}
                except _Gap:  # a compaction removed them since: list again
                    if attempt == 2:
                        raise
                    continue
                self._own[device] = ids
                self._next[device] = max([covered, self._read_up_to(device), *map(int, names)]) + 1
                break
        return self._own[device]

    def _read_up_to(self, device: str) -> int:
        """The batch of its own log this device last said it had read (its record is written by
        it alone, so it is current here even when a synced folder delivers a compaction's
        removals before its snapshot: a number removed is then still not handed out again)."""
        if device != self.device_id:
            return 0
        record = self._device_record(device) or {}
        try:
            return _number(record.get("at", {}).get(device, [0])[0])
        except (AttributeError, TypeError, ValueError, IndexError, KeyError):
            return 0

    def _write_batch(self, device: str, batch: list[WireMutation]) -> list[WireMutation]:
        """Store ``batch`` as the device's next batch; returns what was stored (less, when
        another process of this device stored some of it first)."""
        self._ensure_header()
        while batch:
            path = f"log/{device}/{self._next[device]:0{_NUMBER}d}"
            try:
                self._put(path, self._seal(path, _pack(batch)), create=True)
            except AlreadyExistsError:
                # Another process of this device wrote that number first: reread and go on.
                del self._own[device]
                own = self._own_ids(device)
                batch = [m for m in batch if m.mutation_id not in own]
                continue
            self._next[device] += 1
            self._remember(path, batch)
            self._own[device].update(m.mutation_id for m in batch)
            return batch
        return []

    # --- pull ---------------------------------------------------------------------------------

    def pull(
        self,
        cursor: str | None,
        limit: int = 1000,
        scopes: Sequence[str] | None = None,
        wait: float = 0.0,
    ) -> PullPage:
        check_pull_limit(limit)
        position, count = _read_cursor(cursor)
        if cursor is not None:
            self._publish(cursor, position)
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            page = self._page(position, count, limit, scopes)
            if page.mutations or page.has_more or time.monotonic() >= deadline:
                return page
            time.sleep(min(self.poll_every, max(0.0, deadline - time.monotonic())))

    def _page(
        self,
        position: dict[str, list[int]],
        count: int,
        limit: int,
        scopes: Sequence[str] | None,
    ) -> PullPage:
        """Up to ``limit`` mutations after ``position``, device by device in name order.

        A position only moves over what was read, and over a log's batches only without a gap,
        so nothing is skipped. A gap is first taken for a compaction that ran meanwhile (the
        snapshot is read again and the page started over); a gap that remains holds that
        device's log back. A snapshot that appears while the page is read (its batches maybe
        removed already) also starts the page over, with it."""
        seen: set[tuple[str, int]] = set()
        waiting: set[tuple[str, int]] = set()
        refresh = self._snapshot_at is None
        for _attempt in range(16):
            snapshot = self._latest_snapshot(refresh=refresh)
            try:
                page = self._collect(snapshot, position, count, limit, scopes, waiting)
            except _Gap as gap:
                found = (gap.device, gap.number)
                (waiting if found in seen else seen).add(found)
                refresh = True
                continue
            latest = self._latest_snapshot(refresh=True)
            if (latest and latest.number) == (snapshot and snapshot.number):
                return page
            refresh = False  # the page is read again with the snapshot just found
        raise RemoteUnreachable(f"the objects in {self._url} keep changing; retry in a moment")

    def _collect(
        self,
        snapshot: Snapshot | None,
        position: dict[str, list[int]],
        count: int,
        limit: int,
        scopes: Sequence[str] | None,
        waiting: set[tuple[str, int]],
    ) -> PullPage:
        wanted = set(scopes) if scopes is not None else None
        position = {device: list(at) for device, at in position.items()}
        out: list[WireMutation] = []
        covers = snapshot.covers if snapshot is not None else {}
        for device in sorted(set(self._devices_with_logs()) | set(covers)):
            for number, index, mutation in self._unread(snapshot, device, position, waiting):
                if len(out) == limit:
                    return PullPage(out, _write_cursor(position, count), True)
                position[device] = [number, index + 1]
                count += 1
                if wanted is None or mutation.scope is None or mutation.scope in wanted:
                    out.append(mutation.with_seq(count))
        return PullPage(out, _write_cursor(position, count), False)

    def _unread(
        self,
        snapshot: Snapshot | None,
        device: str,
        position: dict[str, list[int]],
        waiting: set[tuple[str, int]],
    ) -> Iterator[tuple[int, int, WireMutation]]:
        """The device's mutations after its position: from the snapshot while the position is
        inside what it covers, then from the log (moving the position past each batch read)."""
        number, index = position.get(device, [0, 0])
        covered = snapshot.covers.get(device, 0) if snapshot is not None else 0
        if snapshot is not None and covered and number <= covered:
            entries = self._entries(snapshot, device)
            start = bisect.bisect_left(entries, (number, index), key=lambda e: (e[0], e[1]))
            yield from entries[start:]
            number, index = covered, _WHOLE
            position[device] = [number, index]
        expected = number + 1 if index >= _WHOLE or number == 0 else number
        for name in self._batch_names(device, after=max(number - 1, 0)):
            batch_no = int(name)
            if batch_no > expected:
                if (device, expected) in waiting:
                    path = f"log/{device}/{expected:0{_NUMBER}d}"
                    self.missing[path] = "missing from the log: later batches wait for it"
                    return
                raise _Gap(device, expected)
            batch = self._batch(device, name)
            self.missing.pop(f"log/{device}/{name}", None)
            start = index if batch_no == number else 0
            for at in range(start, len(batch)):
                yield batch_no, at, batch[at]
            position[device] = [batch_no, _WHOLE]
            expected = batch_no + 1

    # --- keyring, devices, status ------------------------------------------------------------

    def get_keyring(self) -> KeyringBlob | None:
        numbers = self._keyring_numbers()
        return self._read_keyring(numbers[-1]) if numbers else None

    def keyring_versions(self, limit: int = KEYRING_WALK) -> list[KeyringBlob]:
        return [self._read_keyring(n) for n in self._keyring_numbers()[::-1][:limit]]

    def _keyring_numbers(self) -> list[int]:
        """The keyring versions stored, in order (names that are not numbers are not Cairn's)."""
        names = self._names("keyring/")
        return sorted(int(n) for n in names if _KEYRING_VERSION.fullmatch(n))

    def _read_keyring(self, number: int) -> KeyringBlob:
        """One keyring version; a damaged one comes back as a blob no device can open (so it is
        passed over, yet still counted: the next version is written after it)."""
        path = f"keyring/{number:08d}"
        try:
            raw = self._get(path)
        except FileNotFoundError:
            return KeyringBlob(b"", number)  # removed meanwhile: nothing in it to use
        try:
            data = _json(raw)
            revoked = tuple(sorted({_number(k, 2**32 - 1) for k in data["revoked_key_ids"]}))
            blob = base64.b64decode(data["blob"], validate=True)
            # The proof must name this object's own number: a version copied to a later name
            # (a replay) does not verify.
            proof = keyring_rules.proof_from({**data, "signed_version": number}, number)
        except (KeyError, TypeError, ValueError, binascii.Error, InvalidInput):
            return KeyringBlob(raw[: keyring_rules.MAX_KEYRING_BYTES], number)
        return KeyringBlob(blob, number, revoked, proof)

    def _revoked(self) -> tuple[int, ...]:
        """The revoked key ids a push is checked against: those of the newest keyring version
        the workspace's keys authenticate, as read at most ``KEYRING_TTL`` seconds ago (a
        rotation made here is seen at once). Without the keys open, none."""
        now = time.monotonic()
        check = self._keyring_check
        if check is None:
            return ()
        if self._ring is None or now - self._ring[0] > KEYRING_TTL:
            trusted = next((v for v in self.keyring_versions() if check(v)), None)
            self._ring = (now, trusted)
        ring = self._ring[1]
        return ring.revoked if ring else ()

    def put_keyring(
        self,
        blob: bytes,
        expected_version: int | None,
        revoked: Sequence[int] = (),
        proof: KeyringProof | None = None,
    ) -> int:
        numbers = self._keyring_numbers()
        if (numbers[-1] if numbers else None) != expected_version:
            raise RemoteConflict("the keyring changed on the remote since it was read; read again")
        version = (expected_version or 0) + 1
        if version >= 10**_KEYRING_DIGITS:
            raise SyncError(f"{self._url} holds keyring versions up to {version - 1}: no more fit")
        self._ensure_header()
        record: dict[str, Any] = {
            "blob": base64.b64encode(blob).decode("ascii"),
            "revoked_key_ids": sorted(set(revoked)),
        }
        if proof is not None:
            fields = keyring_rules.proof_fields(proof)
            record.update(signature=fields["signature"], verify_key=fields["verify_key"])
        try:
            self._put(f"keyring/{version:08d}", json.dumps(record).encode(), create=True)
        except AlreadyExistsError as exc:
            raise RemoteConflict("another device changed the keyring at the same time") from exc
        self._ring = None
        return version

    def register_device(self, device_id: str, name: str) -> None:
        self._ensure_header()
        self._name = name
        self._write_device(device_id, {"name": name})

    def _write_device(self, device_id: str, record: dict[str, Any]) -> None:
        path = f"devices/{device_id}"
        record = {**record, "updated_at": _now_ms()}
        self._put(path, self._frame(path, json.dumps(record).encode()), create=False)

    def devices(self) -> dict[str, str]:
        """Each device's name, from its record (sealed: the keys must be open); a record that
        does not open is left out (and listed under ``skipped_objects``)."""
        self._frames()
        names: dict[str, str] = {}
        for device in self._names("devices/"):
            record = self._device_record(device)
            if record is not None and isinstance(record.get("name"), str):
                names[device] = record["name"]
        return names

    def mark_read(self, cursor: str) -> None:
        """This device has applied everything up to ``cursor``: record it at once (a sync that
        ends here leaves nothing for the next one to write)."""
        self._publish(cursor, _read_cursor(cursor)[0], force=True)

    def _publish(self, cursor: str, position: dict[str, list[int]], force: bool = False) -> None:
        """Record how far this device has read (the cursor it pulls from has been applied), so
        a compaction knows which batches every device has passed; at most every
        ``publish_every`` seconds (unless ``force``), and only when it moved: a record that
        already holds this position is not written again, so a folder in a git repository is
        left unmodified by a sync that brought nothing."""
        if self.device_id is None or self.frames is None:
            return
        last = self._published
        now = time.monotonic()
        if last is not None and (
            last[0] == cursor or (not force and now - last[1] < self.publish_every)
        ):
            return
        if last is None:  # this process has not written it yet: what does it hold?
            record = self._device_record(self.device_id)
            if self._name is None:
                self._name = str(record.get("name") or self.device_id) if record else self.device_id
            if record is not None and record.get("at") == position:
                self._published = (cursor, now)
                return
        self._write_device(self.device_id, {"name": self._name, "at": position})
        self._published = (cursor, now)

    def _device_record(self, device_id: str) -> dict[str, Any] | None:
        path = f"devices/{device_id}"
        try:
            data = _json(self._unframe(path, self._get(path)))
        except FileNotFoundError:
            return None
        except (ValueError, CryptoError, zlib.error) as exc:
            self.skipped[path] = str(exc)
            return None
        return data if isinstance(data, dict) else None

    def status(self) -> dict[str, Any]:
        """What the remote holds; before the keys are open (``cairn sync setup`` checking the
        remote) only what object names tell."""
        devices = self._names("devices/")
        try:
            self.probe()
            conditional = "honoured"
        except (AuthFailed, Forbidden):
            conditional = "unchecked (no write access)"
        if self.frames is None:
            return {
                "remote": self._url,
                "mode": "e2e",
                "format": FORMAT,
                "devices": len(devices),
                "conditional_writes": conditional,
            }
        for attempt in range(3):
            snapshot = self._latest_snapshot(refresh=True)
            covers = snapshot.covers if snapshot else {}
            mutations = snapshot.mutations if snapshot else 0
            batches = 0
            try:
                for device in self._devices_with_logs():
                    for name in self._batch_names(device, after=covers.get(device, 0)):
                        batches += 1
                        mutations += len(self._batch(device, name))
            except _Gap:  # a compaction removed batches since they were listed: count again
                if attempt == 2:
                    raise
                continue
            break
        return {
            "remote": self._url,
            "mode": "e2e",
            "format": FORMAT,
            "latest_seq": mutations,
            "mutations": mutations,
            "devices": len(devices),
            "batches": batches,
            "snapshot": snapshot.number if snapshot else None,
            "skipped_objects": dict(self.skipped),
            "missing_objects": dict(self.missing),
            "conditional_writes": conditional,
        }

    def close(self) -> None:
        return None

    # --- compaction ---------------------------------------------------------------------------

    def compact(
        self,
        stale_after: float = STALE_AFTER,
        lock_ttl: float = LOCK_TTL,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Write a snapshot of every log as it is now, then remove the batches it covers that
        every device (that read within ``stale_after`` seconds) has read past, and the earlier
        snapshots. Runs under ``compact.lock``; raises RemoteConflict while another holds it."""
        self._ensure_header()
        token = self._take_lock(lock_ttl)
        try:
            return self._compact(stale_after, progress or (lambda _s, _d, _t: None))
        finally:
            self._release_lock(token)

    def _compact(
        self, stale_after: float, progress: Callable[[str, int, int], None]
    ) -> dict[str, Any]:
        heads = {device: self._batch_names(device) for device in self._devices_with_logs()}
        previous = self._latest_snapshot(refresh=True)
        covers = dict(previous.covers) if previous else {}
        lengths: dict[tuple[str, int], int] = {}
        entries: list[tuple[int, int, WireMutation]] = []
        for device in sorted(set(heads) | set(covers)):
            if previous is not None:
                entries.extend(self._entries(previous, device))
            end = covers.get(device, 0)
            for name in heads.get(device, []):
                number = int(name)
                if number > end and number != end + 1:
                    break  # a gap (a folder still syncing): cover nothing past it
                batch = self._batch(device, name)
                if f"log/{device}/{name}" in self.skipped:
                    break  # an object that does not open is never covered, never removed
                lengths[(device, number)] = len(batch)
                if number > end:
                    entries.extend((number, at, m) for at, m in enumerate(batch))
                    progress("reading", len(entries), 0)
                    end = number
            if end:
                covers[device] = end
        snapshot = previous
        if entries and (previous is None or covers != previous.covers):
            snapshot = self._write_snapshot(previous, covers, entries, progress)
        readers = self._readers(stale_after)
        doomed = [
            f"log/{device}/{number:0{_NUMBER}d}"
            for (device, number), length in sorted(lengths.items())
            if number <= covers.get(device, 0)
            and all(_passed(at.get(device), number, length) for at in readers.values())
        ]
        kept = len(lengths) - len(doomed)
        # Earlier snapshots only: a later one (another compaction's) holds all this one does.
        old = [
            p
            for p in self._names("snapshots/")
            if snapshot is not None and _snapshot_number(p) < snapshot.number
        ]
        for start in range(0, len(doomed), 500):
            self._delete(doomed[start : start + 500])
            progress("removing", min(start + 500, len(doomed)), len(doomed))
        self._delete([f"snapshots/{p}" for p in old])
        return {
            "snapshot": snapshot.number if snapshot else None,
            "snapshot_mutations": snapshot.mutations if snapshot else 0,
            "snapshot_parts": len(snapshot.parts) if snapshot else 0,
            "new_snapshot": snapshot is not previous,
            "removed_batches": len(doomed),
            "kept_batches": kept,
            "removed_snapshot_objects": len(old),
            "readers": sorted(readers),
            "skipped_objects": dict(self.skipped),
        }

    def _write_snapshot(
        self,
        previous: Snapshot | None,
        covers: dict[str, int],
        entries: list[tuple[int, int, WireMutation]],
        progress: Callable[[str, int, int], None],
    ) -> Snapshot:
        number = (previous.number if previous else 0) + 1
        folder = f"snapshots/{number:0{_NUMBER}d}-{secrets.token_hex(8)}"
        parts: list[str] = []
        for start in range(0, len(entries), PART_SIZE):
            path = f"{folder}/{len(parts) + 1:06d}"
            chunk = entries[start : start + PART_SIZE]
            body = _pack([m for _b, _i, m in chunk], [[b, i] for b, i, _m in chunk])
            self._put(path, self._seal(path, body), create=True)
            parts.append(path[len("snapshots/") :])
            progress("writing", start + len(chunk), len(entries))
        manifest = {
            "format": FORMAT,
            "covers": covers,
            "parts": parts,
            "mutations": len(entries),
            "created_at": _now_ms(),
        }
        path = f"snapshots/{number:0{_NUMBER}d}"
        try:
            self._put(path, self._frame(path, _dumps(manifest)), create=True)
        except AlreadyExistsError:
            self._delete([f"snapshots/{p}" for p in parts])
            raise RemoteConflict("another compaction wrote a snapshot at the same time") from None
        made = Snapshot(number, covers, parts, len(entries), _now_ms())
        made.entries, made.loaded = _by_device(entries), True
        self._snapshot = made
        return made

    def _readers(self, stale_after: float) -> dict[str, dict[str, list[int]]]:
        """Each device's published read position, for devices that read recently."""
        since = _now_ms() - int(stale_after * 1000)
        found: dict[str, dict[str, list[int]]] = {}
        for device in self._names("devices/"):
            record = self._device_record(device)
            try:
                if not record or "at" not in record or _number(record.get("updated_at", 0)) < since:
                    continue
                found[device] = {
                    str(d): [_number(a[0]), _number(a[1])] for d, a in record["at"].items()
                }
            except (AttributeError, TypeError, ValueError, IndexError, KeyError):
                continue  # not a position this version wrote: it holds nothing back
        return found

    def _release_lock(self, token: str) -> None:
        """Remove the lock if it is still this compaction's (a slow one may have been taken
        over; correctness never rests on the lock, only its politeness does)."""
        try:
            held = _json(self._get(LOCK))
        except FileNotFoundError:
            return
        except ValueError:
            held = {}
        if isinstance(held, dict) and held.get("owner") == token:
            self._delete([LOCK])

    def _take_lock(self, ttl: float) -> str:
        token = secrets.token_hex(8)
        body = json.dumps({"owner": token, "expires_at": _now_ms() + int(ttl * 1000)}).encode()
        for _attempt in range(2):
            try:
                self._put(LOCK, body, create=True)
                return token
            except AlreadyExistsError:
                try:
                    expires = _number(_json(self._get(LOCK))["expires_at"])
                except FileNotFoundError:
                    continue
                except (ValueError, KeyError, TypeError):
                    expires = 0  # not a lock we understand: treat as stale
                if expires > _now_ms():
                    raise RemoteConflict(
                        f"another compaction of {self._url} is running (its lock expires in "
                        f"{(expires - _now_ms()) // 1000} s); try again later"
                    ) from None
                self._delete([LOCK])
        raise RemoteConflict(f"another compaction of {self._url} took the lock first")

    # --- snapshots ----------------------------------------------------------------------------

    def _latest_snapshot(self, refresh: bool = False) -> Snapshot | None:
        """The newest snapshot's manifest (its parts are read when first needed)."""
        if not refresh and self._snapshot_at is not None:
            return self._snapshot
        self._snapshot_at = time.monotonic()
        for _attempt in range(3):
            found = self._call(
                lambda: obstore.list_with_delimiter(self._store, prefix="snapshots/")
            )
            names = sorted(
                (
                    str(o["path"]).rsplit("/", 1)[-1]
                    for o in found["objects"]
                    if _NUMBERED.fullmatch(str(o["path"]).rsplit("/", 1)[-1])
                ),
                key=int,
            )
            if not names:
                self._snapshot = None
                return None
            number = int(names[-1])
            if self._snapshot is not None and self._snapshot.number == number:
                return self._snapshot
            path = f"snapshots/{names[-1]}"
            try:
                data = _json(self._unframe(path, self._get(path)))
                parts = data["parts"]
                if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
                    raise ValueError("its parts are not a list of names")
                self._snapshot = Snapshot(
                    number,
                    {str(d): _number(n) for d, n in data["covers"].items()},
                    parts,
                    _number(data["mutations"]),
                    _number(data["created_at"]),
                )
            except FileNotFoundError:
                continue  # replaced by a newer one meanwhile
            except (
                ValueError,
                KeyError,
                TypeError,
                AttributeError,
                CryptoError,
                zlib.error,
            ) as exc:
                raise SyncError(f"{path} in {self._url} is damaged: {exc}") from exc
            return self._snapshot
        raise RemoteUnreachable(f"the snapshots in {self._url} keep changing; retry in a moment")

    def _entries(self, snapshot: Snapshot, device: str) -> list[tuple[int, int, WireMutation]]:
        if not snapshot.loaded:
            entries: list[tuple[int, int, WireMutation]] = []
            for part in snapshot.parts:
                path = f"snapshots/{part}"
                try:
                    mutations, at = _unpack(self._open(path, self._get(path)), 2)
                    entries.extend((a[0], a[1], m) for a, m in zip(at, mutations, strict=True))
                except FileNotFoundError:
                    raise _Gap(device, 0) from None  # replaced by a newer snapshot meanwhile
                except (ValueError, TypeError, struct.error, CryptoError, zlib.error) as exc:
                    raise SyncError(f"{path} in {self._url} is damaged: {exc}") from exc
            snapshot.entries = _by_device(entries)
            snapshot.loaded = True
        return snapshot.entries.get(device, [])

    # --- objects ------------------------------------------------------------------------------

    def _devices_with_logs(self) -> list[str]:
        found = self._call(lambda: obstore.list_with_delimiter(self._store, prefix="log/"))
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in found["common_prefixes"])

    def _batch_names(self, device: str, after: int = 0) -> list[str]:
        """The device's batch numbers after ``after``, in order (listed from there on, so a
        long history is not listed again each pull; names that are not batch numbers are not
        Cairn's and are left alone)."""
        prefix = f"log/{device}/"
        names = self._names(prefix, f"{prefix}{after:0{_NUMBER}d}" if after else None)
        return [n for n in names if _NUMBERED.fullmatch(n) and int(n) > after]

    def _names(self, prefix: str, offset: str | None = None) -> list[str]:
        def listing() -> list[str]:
            items = obstore.list(self._store, prefix=prefix, offset=offset).collect()
            return sorted(str(item["path"])[len(prefix) :] for item in items)

        return self._call(listing)

    def _batch(self, device: str, name: str) -> list[WireMutation]:
        """One batch, decoded (cached: batches never change); a damaged or foreign one is
        skipped (an empty batch) and recorded."""
        path = f"log/{device}/{name}"
        with_cache = self._batches.get(path)
        if with_cache is not None:
            return with_cache
        try:
            data = self._get(path)
        except FileNotFoundError:
            raise _Gap(device, int(name)) from None  # removed by a compaction since listed
        try:
            mutations, _ = _unpack(self._open(path, data))
            if any(m.device_id != device for m in mutations):
                raise ValueError("it holds another device's mutations")
        except (ValueError, TypeError, struct.error, CryptoError, zlib.error) as exc:
            self.skipped[path] = str(exc) or type(exc).__name__
            mutations = []
        self._remember(path, mutations)
        return mutations

    def _remember(self, path: str, batch: list[WireMutation]) -> None:
        self._batches[path] = batch
        while len(self._batches) > _CACHE:
            self._batches.popitem(last=False)

    def _frames(self) -> Frames:
        if self.frames is None:
            raise SyncNotConfigured(
                f"the workspace's keys are not open for {self._url}; run `cairn sync setup`"
            )
        return self.frames

    def _seal(self, path: str, body: bytes) -> bytes:
        return FRAME + self._frames().seal(path, body)

    def _open(self, path: str, data: bytes) -> bytes:
        frames = self._frames()  # no key is not a damaged object: never skip for it
        if data[:4] != FRAME:
            raise ValueError("not a Cairn object")
        return frames.open(path, data[4:])

    def _frame(self, path: str, body: bytes) -> bytes:
        """A small JSON object (a device record, a manifest), compressed and sealed."""
        return self._seal(path, zlib.compress(body, 6))

    def _unframe(self, path: str, data: bytes) -> bytes:
        return _inflate(self._open(path, data))

    def probe(self) -> None:
        """Check that the storage honours put-if-absent (``If-None-Match: *`` on S3): write a
        probe object twice, the second time expecting to be refused; StorageUnsupported if it
        was not. Everything that keeps devices apart (batch numbers, keyring versions) rests on
        it, so storage without it is refused rather than used to split a workspace silently."""
        path = f"probes/{secrets.token_hex(8)}"
        self._put(path, b"probe", create=True)
        try:
            self._put(path, b"probe again", create=True)
        except AlreadyExistsError:
            self._probed_at = time.monotonic()
            return
        finally:
            self._delete([path])
        raise StorageUnsupported(
            f"{self._url} does not honour conditional writes: a put with If-None-Match: * "
            "(put-if-absent) overwrote an existing object. Devices syncing through it would "
            "overwrite each other's changes and keyring, so Cairn will not use it. Use storage "
            "that supports S3 conditional writes (AWS S3, Cloudflare R2, MinIO, SeaweedFS, or "
            "a folder), or upgrade the service or gateway in between."
        )

    def _ensure_header(self) -> None:
        if self._probed_at is None or time.monotonic() - self._probed_at > PROBE_EVERY:
            self.probe()
        if self._checked:
            return
        try:
            self._put(HEADER, json.dumps({"format": FORMAT}).encode(), create=True)
        except AlreadyExistsError:
            try:
                found = _number(_json(self._get(HEADER))["format"])
            except (KeyError, TypeError, ValueError) as exc:
                raise SyncError(f"{HEADER} in {self._url} is not Cairn's") from exc
            if found > FORMAT:
                raise SchemaTooNew(
                    f"{self._url} was written by a newer Cairn (format {found}); upgrade Cairn"
                ) from None
        self._checked = True

    def _get(self, path: str) -> bytes:
        return self._call(lambda: bytes(obstore.get(self._store, path).bytes()))

    def _put(self, path: str, data: bytes, create: bool) -> None:
        self._call(lambda: obstore.put(self._store, path, data, mode="create" if create else None))

    def _delete(self, paths: list[str]) -> None:
        """Remove objects; one already gone (another compaction, a synced folder) is fine."""
        if not paths:
            return
        try:
            self._call(lambda: obstore.delete(self._store, paths))
        except FileNotFoundError:
            for path in paths:
                try:
                    self._call(lambda p=path: obstore.delete(self._store, p))  # type: ignore[misc]
                except FileNotFoundError:
                    pass

    def _call(self, work: Callable[[], T]) -> T:
        """Run an obstore call; failures of the storage become RemoteUnreachable."""
        try:
            return work()
        except (AlreadyExistsError, FileNotFoundError):
            raise
        except OSError as exc:
            raise RemoteUnreachable(f"cannot reach {self._url}: {_first_line(exc)}") from exc
        except UnauthenticatedError as exc:
            raise AuthFailed(f"{self._url} refused the credentials: {_first_line(exc)}") from exc
        except PermissionDeniedError as exc:
            raise Forbidden(f"{self._url}: {_first_line(exc)}") from exc
        except Exception as exc:  # obstore's own errors (network, auth) are not OSErrors
            if type(exc).__module__.startswith("obstore"):
                raise RemoteUnreachable(f"{self._url}: {_first_line(exc)}") from exc
            raise


def open_url(
    url: str, endpoint_url: str | None = None, device_id: str | None = None, create: bool = False
) -> ObjectRemote:
    """The object remote a URL names: ``file:///path/to/folder`` or ``s3://bucket/prefix``.

    A folder must exist unless ``create`` (``cairn sync setup --create``): a typo never makes
    a new, empty workspace, and a folder that went away (unmounted, moved) is unreachable
    until it is back. S3 credentials and region come the usual AWS way (environment
    variables, then the shared config and credentials files and ``AWS_PROFILE``, through
    boto3's chain); ``endpoint_url`` points at an S3-compatible service (R2, B2, MinIO, ...)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise InvalidInput(f"{url!r}: a folder remote is file:///absolute/path")
        folder = Path(unquote(parsed.path))
        if not folder.is_absolute():
            raise InvalidInput(f"{url!r}: a folder remote is file:///absolute/path")
        if not create and not folder.is_dir():
            raise RemoteUnreachable(
                f"the sync folder {folder} does not exist (moved, or not mounted?); sync "
                "waits for it to be back"
            )
        from obstore.store import LocalStore

        try:
            store = LocalStore(folder, mkdir=create)
        except Exception as exc:  # obstore raises its own errors for a folder it cannot make
            raise InvalidInput(f"cannot use {folder} as a sync folder: {exc}") from exc
        return ObjectRemote(store, folder.as_uri(), device_id)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise InvalidInput(f"{url!r}: name the bucket, s3://bucket/optional/prefix")
        return ObjectRemote(_s3_store(url, endpoint_url), url.rstrip("/"), device_id)
    raise InvalidInput(f"{url!r} is not an object storage URL (file:///path or s3://bucket)")


def _s3_store(url: str, endpoint_url: str | None) -> Any:
    import boto3  # type: ignore[import-untyped]
    from obstore.auth.boto3 import Boto3CredentialProvider
    from obstore.store import S3Store

    config: dict[str, Any] = {}
    session = boto3.Session()  # environment, then AWS_PROFILE / ~/.aws files, SSO, roles
    if session.get_credentials() is None:
        raise AuthFailed(
            f"no AWS credentials for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
            "AWS_PROFILE (a profile in ~/.aws/credentials)"
        )
    provider = Boto3CredentialProvider(session)
    if endpoint_url:
        config["endpoint"] = endpoint_url.rstrip("/")
    client: dict[str, Any] = {"connect_timeout": "5s", "timeout": "60s"}
    if (endpoint_url or "").startswith("http://"):
        client["allow_http"] = True
    retry: dict[str, Any] = {"max_retries": 3, "retry_timeout": timedelta(seconds=20)}
    try:
        return S3Store.from_url(
            url,
            config=config or None,  # type: ignore[arg-type]
            client_options=client,  # type: ignore[arg-type]
            retry_config=retry,  # type: ignore[arg-type]
            credential_provider=provider,
        )
    except Exception as exc:  # obstore's configuration errors
        raise InvalidInput(f"cannot use {url}: {exc}") from exc


_S3_ERROR = re.compile(r"<Code>([A-Za-z0-9.]{1,64})</Code>\s*<Message>([^<]{0,300})</Message>")
_S3_HINTS = {
    "NoSuchBucket": "check the bucket's name (and --endpoint-url), or create the bucket first",
    "AccessDenied": "check that these credentials may read and write this bucket",
    "InvalidAccessKeyId": "check AWS_ACCESS_KEY_ID (or the profile's key)",
    "SignatureDoesNotMatch": "check AWS_SECRET_ACCESS_KEY (or the profile's secret)",
}


def _first_line(exc: Exception) -> str:
    """An obstore error's message without the debug dump it appends, and an S3 error's XML
    body said as its code and message (with what to do, for the usual ones)."""
    text = str(exc).split("\n\nDebug source", 1)[0].strip()
    found = _S3_ERROR.search(text)
    if found is None:
        return text
    code, message = found.groups()
    hint = _S3_HINTS.get(code)
    return f"{code}: {message.strip()}" + (f"; {hint}" if hint else "")


def _snapshot_number(name: str) -> int:
    """The snapshot an object under ``snapshots/`` belongs to (its manifest or a part)."""
    head = name.split("/", 1)[0].split("-", 1)[0]
    return int(head) if _NUMBERED.fullmatch(head) else 1 << 62


def _passed(at: list[int] | None, number: int, length: int) -> bool:
    """Whether a reader at ``at`` (batch, index) in a log has read all of batch ``number``."""
    return at is not None and (at[0] > number or (at[0] == number and at[1] >= length))


def _by_device(
    entries: list[tuple[int, int, WireMutation]],
) -> dict[str, list[tuple[int, int, WireMutation]]]:
    grouped: dict[str, list[tuple[int, int, WireMutation]]] = {}
    for entry in entries:
        grouped.setdefault(entry[2].device_id, []).append(entry)
    for device_entries in grouped.values():
        device_entries.sort(key=lambda e: (e[0], e[1]))
    return grouped


def _pack(mutations: Sequence[WireMutation], extra: list[list[int]] | None = None) -> bytes:
    """A batch's (or a snapshot part's) bytes: the mutations' fields (and ``extra`` numbers per
    mutation) as compressed JSON, then their payloads as they are. Sealed payloads do not
    compress, and base64 would make them a third larger, so only the fields are compressed."""
    rows = [
        [*(extra[k] if extra else ()), m.version, m.mutation_id, m.device_id, m.hlc]
        + [m.entity_id, m.scope, len(m.payload)]
        for k, m in enumerate(mutations)
    ]
    head = zlib.compress(_dumps(rows), 6)
    return b"".join([_HEAD.pack(len(head)), head, *(m.payload for m in mutations)])


def _unpack(data: bytes, extra: int = 0) -> tuple[list[WireMutation], list[list[int]]]:
    """The mutations ``_pack`` wrote, and their extra numbers; ValueError if it is not one (or
    holds a mutation no remote would store)."""
    (size,) = _HEAD.unpack_from(data)
    rows = _json(_inflate(data[_HEAD.size : _HEAD.size + size]))
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise ValueError("its fields are not a list of rows")
    offset = _HEAD.size + size
    mutations: list[WireMutation] = []
    numbers: list[list[int]] = []
    for row in rows:
        numbers.append([_number(n) for n in row[:extra]])
        version, mutation_id, device_id, hlc, entity_id, scope, length = row[extra:]
        if not all(isinstance(f, str) for f in (mutation_id, device_id, hlc, entity_id)):
            raise ValueError("a mutation's ids and clock must be strings")
        if not isinstance(version, int) or not isinstance(length, int) or length < 0:
            raise ValueError("a mutation's version and size must be numbers")
        if scope is not None and not isinstance(scope, str):
            raise ValueError("a mutation's scope must be a string or null")
        payload = data[offset : offset + length]
        offset += length
        mutation = WireMutation(
            mutation_id, device_id, hlc, entity_id, scope, payload, None, version
        )
        found = problem(mutation)
        if found is not None:
            raise ValueError(f"it holds a mutation no remote stores: {found[1]}")
        mutations.append(mutation)
    if offset != len(data):
        raise ValueError("its payloads do not add up to its size")
    return mutations, numbers


def _inflate(data: bytes) -> bytes:
    """zlib data inflated, up to ``MAX_INFLATED`` bytes; ValueError past that or cut short."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, MAX_INFLATED)
    if inflater.unconsumed_tail or (not inflater.eof and len(out) >= MAX_INFLATED):
        raise ValueError(f"it inflates past {MAX_INFLATED} bytes")
    if not inflater.eof:
        raise ValueError("its compressed data is cut short")
    return out


def _json(data: bytes) -> Any:
    """An object's JSON; ValueError when it is not JSON or nests past the interpreter's stack."""
    try:
        return json.loads(data)
    except RecursionError as exc:
        raise ValueError("its JSON nests too deeply") from exc


def _number(value: Any, high: int = MAX_NUMBER) -> int:
    """A whole number from 0 to ``high`` as this code writes it: ValueError for a float (1e400
    is infinity), a bool, a string, or one out of range."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= high:
        return value
    raise ValueError(f"{value!r:.40} is not a whole number from 0 to {high}")


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _read_cursor(cursor: str | None) -> tuple[dict[str, list[int]], int]:
    if cursor is None:
        return {}, 0
    try:
        data = _json(base64.urlsafe_b64decode(cursor.encode("ascii")))
        if not isinstance(data["at"], dict):
            raise TypeError("its positions are not an object")
        position = {
            str(device): [_number(number), _number(index)]
            for device, (number, index) in data["at"].items()
        }
        return position, _number(data["n"])
    except (ValueError, TypeError, KeyError, IndexError, binascii.Error) as exc:
        raise InvalidInput(f"cursor {cursor!r} is not one this remote gave out") from exc


def _write_cursor(position: dict[str, list[int]], count: int) -> str:
    data = json.dumps({"at": position, "n": count}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(data.encode()).decode("ascii")
