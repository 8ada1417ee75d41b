"""Reading an object remote's logs after a position: from the snapshot, then batch by batch."""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence

from cairn.errors import RemoteUnreachable
from cairn.protocol import PullPage, WireMutation
from cairn.remotes.objects.cursors import WHOLE, Position, write_cursor
from cairn.remotes.objects.format import batch_path
from cairn.remotes.objects.logs import Gap, Logs
from cairn.remotes.objects.snapshots import Snapshot, Snapshots


def page(
    logs: Logs,
    snapshots: Snapshots,
    position: Position,
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
    refresh = snapshots.looked_at is None
    for _attempt in range(16):
        snapshot = snapshots.latest(refresh=refresh)
        try:
            found_page = _collect(
                logs, snapshots, snapshot, position, count, limit, scopes, waiting
            )
        except Gap as gap:
            found = (gap.device, gap.number)
            (waiting if found in seen else seen).add(found)
            refresh = True
            continue
        latest = snapshots.latest(refresh=True)
        if (latest and latest.number) == (snapshot and snapshot.number):
            return found_page
        refresh = False  # the page is read again with the snapshot just found
    raise RemoteUnreachable(f"the objects in {logs.blobs.url} keep changing; retry in a moment")


def _collect(
    logs: Logs,
    snapshots: Snapshots,
    snapshot: Snapshot | None,
    position: Position,
    count: int,
    limit: int,
    scopes: Sequence[str] | None,
    waiting: set[tuple[str, int]],
) -> PullPage:
    wanted = set(scopes) if scopes is not None else None
    position = {device: list(at) for device, at in position.items()}
    out: list[WireMutation] = []
    covers = snapshot.covers if snapshot is not None else {}
    for device in sorted(set(logs.devices()) | set(covers)):
        for number, index, mutation in _unread(
            logs, snapshots, snapshot, device, position, waiting
        ):
            if len(out) == limit:
                return PullPage(out, write_cursor(position, count), True)
            position[device] = [number, index + 1]
            count += 1
            if wanted is None or mutation.scope is None or mutation.scope in wanted:
                out.append(mutation.with_seq(count))
    return PullPage(out, write_cursor(position, count), False)


def _unread(
    logs: Logs,
    snapshots: Snapshots,
    snapshot: Snapshot | None,
    device: str,
    position: Position,
    waiting: set[tuple[str, int]],
) -> Iterator[tuple[int, int, WireMutation]]:
    """The device's mutations after its position: from the snapshot while the position is
    inside what it covers, then from the log (moving the position past each batch read)."""
    number, index = position.get(device, [0, 0])
    covered = snapshot.covers.get(device, 0) if snapshot is not None else 0
    if snapshot is not None and covered and number <= covered:
        entries = snapshots.entries(snapshot, device)
        start = bisect.bisect_left(entries, (number, index), key=lambda e: (e[0], e[1]))
        yield from entries[start:]
        number, index = covered, WHOLE
        position[device] = [number, index]
    expected = number + 1 if index >= WHOLE or number == 0 else number
    missing = logs.blobs.missing
    for name in logs.batch_names(device, after=max(number - 1, 0)):
        batch_no = int(name)
        if batch_no > expected:
            if (device, expected) in waiting:
                missing[batch_path(device, expected)] = (
                    "missing from the log: later batches wait for it"
                )
                return
            raise Gap(device, expected)
        batch = logs.batch(device, name)
        missing.pop(f"log/{device}/{name}", None)
        start = index if batch_no == number else 0
        for at in range(start, len(batch)):
            yield batch_no, at, batch[at]
        position[device] = [batch_no, WHOLE]
        expected = batch_no + 1
