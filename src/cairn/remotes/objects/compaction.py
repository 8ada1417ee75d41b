"""Compacting an object remote: snapshot every log, then remove batches every device has read."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

from obstore.exceptions import AlreadyExistsError

from cairn.errors import RemoteConflict
from cairn.remotes.objects.blobs import Blobs
from cairn.remotes.objects.cursors import DeviceRecords
from cairn.remotes.objects.format import batch_path, now_ms, parse_json, whole_number
from cairn.remotes.objects.logs import Logs
from cairn.remotes.objects.snapshots import Entry, Snapshots, snapshot_number

LOCK = "compact.lock"
LOCK_TTL = 600.0
"""Seconds after which a compaction's lock is stale (its holder died) and may be taken over."""
STALE_AFTER = 30 * 86400.0
"""A device that has not read for this long no longer holds batches back from compaction (it
reads the snapshot instead when it returns)."""

Progress = Callable[[str, int, int], None]


def compact(
    logs: Logs,
    snapshots: Snapshots,
    records: DeviceRecords,
    stale_after: float,
    lock_ttl: float,
    progress: Progress,
) -> dict[str, Any]:
    """Write a snapshot of every log as it is now, then remove the batches it covers that
    every device (that read within ``stale_after`` seconds) has read past, and the earlier
    snapshots. Runs under ``compact.lock``; raises RemoteConflict while another holds it."""
    token = _take_lock(logs.blobs, lock_ttl)
    try:
        return _compact(logs, snapshots, records, stale_after, progress)
    finally:
        _release_lock(logs.blobs, token)


def _compact(
    logs: Logs,
    snapshots: Snapshots,
    records: DeviceRecords,
    stale_after: float,
    progress: Progress,
) -> dict[str, Any]:
    blobs = logs.blobs
    heads = {device: logs.batch_names(device) for device in logs.devices()}
    previous = snapshots.latest(refresh=True)
    covers = dict(previous.covers) if previous else {}
    lengths: dict[tuple[str, int], int] = {}
    entries: list[Entry] = []
    for device in sorted(set(heads) | set(covers)):
        if previous is not None:
            entries.extend(snapshots.entries(previous, device))
        end = covers.get(device, 0)
        for name in heads.get(device, []):
            number = int(name)
            if number > end and number != end + 1:
                break  # a gap (a folder still syncing): cover nothing past it
            batch = logs.batch(device, name)
            if f"log/{device}/{name}" in blobs.skipped:
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
        snapshot = snapshots.write(previous, covers, entries, progress)
    readers = records.readers(stale_after)
    doomed = [
        batch_path(device, number)
        for (device, number), length in sorted(lengths.items())
        if number <= covers.get(device, 0)
        and all(_passed(at.get(device), number, length) for at in readers.values())
    ]
    kept = len(lengths) - len(doomed)
    # Earlier snapshots only: a later one (another compaction's) holds all this one does.
    old = [
        p
        for p in blobs.names("snapshots/")
        if snapshot is not None and snapshot_number(p) < snapshot.number
    ]
    for start in range(0, len(doomed), 500):
        blobs.delete(doomed[start : start + 500])
        progress("removing", min(start + 500, len(doomed)), len(doomed))
    blobs.delete([f"snapshots/{p}" for p in old])
    return {
        "snapshot": snapshot.number if snapshot else None,
        "snapshot_mutations": snapshot.mutations if snapshot else 0,
        "snapshot_parts": len(snapshot.parts) if snapshot else 0,
        "new_snapshot": snapshot is not previous,
        "removed_batches": len(doomed),
        "kept_batches": kept,
        "removed_snapshot_objects": len(old),
        "readers": sorted(readers),
        "skipped_objects": dict(blobs.skipped),
    }


def _passed(at: list[int] | None, number: int, length: int) -> bool:
    """Whether a reader at ``at`` (batch, index) in a log has read all of batch ``number``."""
    return at is not None and (at[0] > number or (at[0] == number and at[1] >= length))


def _take_lock(blobs: Blobs, ttl: float) -> str:
    token = secrets.token_hex(8)
    body = json.dumps({"owner": token, "expires_at": now_ms() + int(ttl * 1000)}).encode()
    for _attempt in range(2):
        try:
            blobs.put(LOCK, body, create=True)
            return token
        except AlreadyExistsError:
            try:
                expires = whole_number(parse_json(blobs.get(LOCK))["expires_at"])
            except FileNotFoundError:
                continue
            except (ValueError, KeyError, TypeError):
                expires = 0  # not a lock we understand: treat as stale
            if expires > now_ms():
                raise RemoteConflict(
                    f"another compaction of {blobs.url} is running (its lock expires in "
                    f"{(expires - now_ms()) // 1000} s); try again later"
                ) from None
            blobs.delete([LOCK])
    raise RemoteConflict(f"another compaction of {blobs.url} took the lock first")


def _release_lock(blobs: Blobs, token: str) -> None:
    """Remove the lock if it is still this compaction's (a slow one may have been taken
    over; correctness never rests on the lock, only its politeness does)."""
    try:
        held = parse_json(blobs.get(LOCK))
    except FileNotFoundError:
        return
    except ValueError:
        held = {}
    if isinstance(held, dict) and held.get("owner") == token:
        blobs.delete([LOCK])
