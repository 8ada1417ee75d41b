"""What only the object-storage remote promises (the shared contract is test_conformance.py):
what a bucket learns, and objects in it that are not Cairn's or are damaged."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import obstore
import pytest
from obstore.store import LocalStore

from cairn.crypto.frames import Frames
from cairn.errors import RemoteConflict, SchemaTooNew, StorageUnsupported, SyncNotConfigured
from cairn.protocol import WireMutation
from cairn.remotes.objects import ObjectRemote

from ..conftest import S3Server
from .test_conformance import mutation, pull_all


@pytest.fixture(params=["folder", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "folder":
        yield LocalStore(tmp_path / "remote", mkdir=True)
    else:
        yield request.getfixturevalue("s3_server").bucket()


def objects(store: Any) -> dict[str, bytes]:
    return {
        str(item["path"]): bytes(obstore.get(store, item["path"]).bytes())
        for item in obstore.list(store).collect()
    }


def test_the_bucket_learns_object_names_and_sizes_only(store: Any) -> None:
    remote = ObjectRemote(store, "s3://bucket", frames=Frames(os.urandom(32)))
    remote.register_device("dev-a", "alices-laptop")
    # Every secret is long enough that random ciphertext cannot hold it by chance (a
    # three-byte entity id "e-3" did, once in ~10^4 runs).
    remote.push(
        [replace(mutation(n, scope="abcdef12"), entity_id=f"entity-{n:06d}") for n in range(5)]
    )
    stored = objects(store)
    assert sorted(stored) == ["cairn.json", "devices/dev-a", "log/dev-a/000000000001"]
    every_byte = b"".join(stored.values())
    for secret in (b"m-00003", b"alices-laptop", b"abcdef12", b"1700000000003", b"entity-000003"):
        assert secret not in every_byte


def test_damaged_and_foreign_objects_are_skipped_and_reported(store: Any) -> None:
    key = os.urandom(32)
    remote = ObjectRemote(store, "s3://bucket", frames=Frames(key))
    for start in (0, 3, 6):
        remote.push([mutation(n) for n in range(start, start + 3)])
    second = bytes(obstore.get(store, "log/dev-a/000000000002").bytes())
    obstore.put(store, "log/dev-a/000000000002", second[:-10])  # truncated
    obstore.put(store, "log/dev-a/000000000004", b"not a batch")  # foreign
    obstore.put(store, "log/dev-a/notes.txt", b"someone's file")  # not a batch name at all
    reader = ObjectRemote(store, "s3://bucket", frames=Frames(key))
    ids = [m.mutation_id for m in pull_all(reader)]
    assert ids == ["m-00000", "m-00001", "m-00002", "m-00006", "m-00007", "m-00008"]
    skipped = reader.status()["skipped_objects"]
    assert set(skipped) == {"log/dev-a/000000000002", "log/dev-a/000000000004"}
    # Another workspace's key opens nothing, and applies nothing.
    stranger = ObjectRemote(store, "s3://bucket", frames=Frames(os.urandom(32)))
    assert pull_all(stranger) == []
    assert len(stranger.status()["skipped_objects"]) == 4


def test_a_newer_format_is_refused_not_misread(store: Any) -> None:
    obstore.put(store, "cairn.json", b'{"format": 99}')
    remote = ObjectRemote(store, "s3://bucket", frames=Frames(os.urandom(32)))
    with pytest.raises(SchemaTooNew):
        remote.push([mutation(1)])
    assert [str(i["path"]) for i in obstore.list(store).collect()] == ["cairn.json"]


# --- compaction ----------------------------------------------------------------------------


def of(device: str, n: int) -> WireMutation:
    return replace(mutation(n), device_id=device, mutation_id=f"{device}-{n:05d}")


def ids(mutations: list[WireMutation]) -> list[str]:
    return [m.mutation_id for m in mutations]


def test_a_compacted_remote_serves_every_reader_exactly_once(store: Any) -> None:
    frames = Frames(os.urandom(32))
    a = ObjectRemote(store, "s3://bucket", "dev-a", frames, publish_every=0)
    b = ObjectRemote(store, "s3://bucket", "dev-b", frames, publish_every=0)
    for start in range(0, 12, 3):
        a.push([of("dev-a", n) for n in range(start, start + 3)])
        b.push([of("dev-b", n) for n in range(start, start + 2)])
    everything = ids(pull_all(a))
    assert len(everything) == 20
    # A reader part-way through: 7 mutations read, cursor kept from before the compaction.
    partway = a.pull(None, limit=7)
    # Both devices have read to the end and said so (a pull from the end publishes).
    for device in (a, b):
        device.pull(pull_all_cursor(device))
    report = ObjectRemote(store, "s3://bucket", frames=frames).compact()
    assert report["new_snapshot"] and report["snapshot_mutations"] == 20
    assert report["removed_batches"] == 8 and report["kept_batches"] == 0
    assert sorted(report["readers"]) == ["dev-a", "dev-b"]
    assert [n for n in names(store) if n.startswith("log/")] == []
    # A new device reads the snapshot; the part-way reader resumes inside it; both see each
    # mutation exactly once, in the same order as before the compaction.
    fresh = ObjectRemote(store, "s3://bucket", "dev-c", frames)
    assert ids(pull_all(fresh, limit=6)) == everything
    assert ids(partway.mutations) + ids(pull_all(fresh, partway.cursor, limit=5)) == everything
    # Writing goes on after it: numbers are not reused, and the latest batch pushed again by a
    # new process (a retry whose acknowledgement was lost) stores nothing.
    writer = ObjectRemote(store, "s3://bucket", "dev-a", frames)
    assert writer.push([of("dev-a", 99)]).stored == 1
    assert "log/dev-a/000000000005" in names(store)
    retry = ObjectRemote(store, "s3://bucket", "dev-a", frames)
    assert retry.push([of("dev-a", 99)]).stored == 0
    after = ids(pull_all(fresh))
    assert len(after) == len(set(after)) == 21 and "dev-a-00099" in after
    assert fresh.status()["mutations"] == 21


def test_compaction_keeps_what_a_recent_reader_has_not_read(store: Any) -> None:
    frames = Frames(os.urandom(32))
    a = ObjectRemote(store, "s3://bucket", "dev-a", frames, publish_every=0)
    b = ObjectRemote(store, "s3://bucket", "dev-b", frames, publish_every=0)
    for n in range(4):
        a.push([of("dev-a", n)])
    first_two = a.pull(None, limit=2)
    b.pull(b.pull(None).cursor)  # b has read all four and published it
    a.pull(first_two.cursor)  # a has read two, and published that
    report = ObjectRemote(store, "s3://bucket", frames=frames).compact()
    assert report["removed_batches"] == 2 and report["kept_batches"] == 2
    assert [n for n in names(store) if n.startswith("log/")] == [
        "log/dev-a/000000000003",
        "log/dev-a/000000000004",
    ]
    assert ids(pull_all(a, first_two.cursor)) == ["dev-a-00002", "dev-a-00003"]
    # A reader that has not read for longer than the stale limit holds nothing back.
    report = ObjectRemote(store, "s3://bucket", frames=frames).compact(stale_after=0)
    assert report["removed_batches"] == 2 and not report["new_snapshot"]
    # A second snapshot replaces the first (objects of the old one are removed).
    a.push([of("dev-a", 9)])
    report = ObjectRemote(store, "s3://bucket", frames=frames).compact(stale_after=0)
    assert report["snapshot"] == 2 and report["removed_snapshot_objects"] == 2
    assert sorted(n for n in names(store) if n.startswith("snapshots/"))[0].startswith(
        "snapshots/000000000002"
    )
    assert len(ids(pull_all(ObjectRemote(store, "s3://bucket", frames=frames)))) == 5


def test_a_reader_whose_unread_batches_were_all_removed_finds_them_in_the_snapshot(
    store: Any,
) -> None:
    """Its log listing comes back empty (no gap to notice): the snapshot that appeared while
    it read makes it read the page again, from the snapshot."""
    frames = Frames(os.urandom(32))
    writer = ObjectRemote(store, "s3://bucket", "dev-a", frames)
    for n in range(3):
        writer.push([of("dev-a", n)])
    reader = ObjectRemote(store, "s3://bucket", "dev-b", frames)
    first = reader.pull(None, limit=1)  # it has looked: no snapshot, and it read one batch
    report = ObjectRemote(store, "s3://bucket", frames=frames).compact(stale_after=0)
    assert report["removed_batches"] == 3
    assert ids(pull_all(reader, first.cursor)) == ["dev-a-00001", "dev-a-00002"]


def test_one_compaction_at_a_time_and_a_stale_lock_is_taken_over(store: Any) -> None:
    frames = Frames(os.urandom(32))
    remote = ObjectRemote(store, "s3://bucket", "dev-a", frames)
    remote.push([of("dev-a", 1)])
    held = json.dumps({"owner": "other", "expires_at": int(time.time() * 1000) + 60_000})
    obstore.put(store, "compact.lock", held.encode())
    with pytest.raises(RemoteConflict, match="another compaction"):
        remote.compact()
    assert "compact.lock" in names(store) and not any(n.startswith("snap") for n in names(store))
    stale = json.dumps({"owner": "dead", "expires_at": int(time.time() * 1000) - 1})
    obstore.put(store, "compact.lock", stale.encode())
    assert remote.compact()["snapshot"] == 1
    assert "compact.lock" not in names(store)


def test_a_batch_missing_from_a_log_holds_that_log_back_until_it_arrives(store: Any) -> None:
    """A synced folder can deliver batch 3 before batch 2: the reader waits for 2 rather than
    skip it, and says so in its status."""
    frames = Frames(os.urandom(32))
    writer = ObjectRemote(store, "s3://bucket", "dev-a", frames)
    for n in range(3):
        writer.push([of("dev-a", n)])
    second = bytes(obstore.get(store, "log/dev-a/000000000002").bytes())
    obstore.delete(store, "log/dev-a/000000000002")
    reader = ObjectRemote(store, "s3://bucket", "dev-b", frames)
    page = reader.pull(None)
    assert ids(page.mutations) == ["dev-a-00000"]
    assert list(reader.status()["missing_objects"]) == ["log/dev-a/000000000002"]
    obstore.put(store, "log/dev-a/000000000002", second)  # the folder caught up
    assert ids(pull_all(reader, page.cursor)) == ["dev-a-00001", "dev-a-00002"]
    assert reader.status()["missing_objects"] == {}


def test_without_the_workspace_keys_nothing_is_written_or_skipped(store: Any) -> None:
    frames = Frames(os.urandom(32))
    ObjectRemote(store, "s3://bucket", "dev-a", frames).push([of("dev-a", 1)])
    locked = ObjectRemote(store, "s3://bucket", "dev-b")
    assert locked.status()["devices"] == 0  # what names tell works before the keys are open
    with pytest.raises(SyncNotConfigured):
        locked.push([of("dev-b", 1)])
    with pytest.raises(SyncNotConfigured):
        locked.pull(None)
    assert locked.skipped == {}
    assert not any(n.startswith("log/dev-b") for n in names(store))


def names(store: Any) -> list[str]:
    return sorted(str(item["path"]) for item in obstore.list(store).collect())


def pull_all_cursor(remote: ObjectRemote) -> str | None:
    cursor = None
    while True:
        page = remote.pull(cursor)
        cursor = page.cursor
        if not page.has_more:
            return cursor


def test_compaction_covers_no_gap_and_no_object_that_does_not_open(store: Any) -> None:
    """A folder still syncing may hold batch 4 but not yet 3: the snapshot stops at 2, so 3
    is read when it arrives. A batch that does not open is never covered nor removed, and a
    compaction with another workspace's key removes nothing at all."""
    frames = Frames(os.urandom(32))
    writer = ObjectRemote(store, "s3://bucket", "dev-a", frames)
    for n in range(5):
        writer.push([of("dev-a", n)])
    third = bytes(obstore.get(store, "log/dev-a/000000000003").bytes())
    obstore.delete(store, "log/dev-a/000000000003")
    before = names(store)
    stranger = ObjectRemote(store, "s3://bucket", frames=Frames(os.urandom(32)))
    assert stranger.compact(stale_after=0)["removed_batches"] == 0
    assert names(store) == before
    report = ObjectRemote(store, "s3://bucket", frames=frames).compact(stale_after=0)
    assert report["snapshot_mutations"] == 2 and report["removed_batches"] == 2
    obstore.put(store, "log/dev-a/000000000003", third)  # the folder caught up
    assert ids(pull_all(ObjectRemote(store, "s3://bucket", frames=frames))) == [
        f"dev-a-{n:05d}" for n in range(5)
    ]
    obstore.put(store, "log/dev-a/000000000006", b"not ours")
    writer.push([of("dev-a", 6)])  # batch 7, after the foreign 6
    report = ObjectRemote(store, "s3://bucket", frames=frames).compact(stale_after=0)
    assert report["snapshot_mutations"] == 5 and "log/dev-a/000000000006" in names(store)
    assert "log/dev-a/000000000007" in names(store)


def test_a_slow_compaction_never_removes_a_later_one(store: Any) -> None:
    """A compaction that outlives its lock: another takes over and writes a newer snapshot;
    the slow one removes only what is older than its own, and not the other's lock."""
    frames = Frames(os.urandom(32))
    writer = ObjectRemote(store, "s3://bucket", "dev-a", frames)
    for n in range(3):
        writer.push([of("dev-a", n)])
    slow = ObjectRemote(store, "s3://bucket", frames=frames)
    fast = ObjectRemote(store, "s3://bucket", frames=frames)
    done: list[dict[str, Any]] = []
    readers = slow._records.readers

    def meanwhile(stale_after: float) -> dict[str, dict[str, list[int]]]:
        writer.push([of("dev-a", 3)])
        done.append(fast.compact(stale_after=0))  # the slow one's lock is stale already
        return readers(stale_after)

    slow._records.readers = meanwhile  # type: ignore[method-assign]
    report = slow.compact(stale_after=0, lock_ttl=0)
    assert report["snapshot"] == 1 and done[0]["snapshot"] == 2
    assert any(n.startswith("snapshots/000000000002") for n in names(store))
    assert ids(pull_all(ObjectRemote(store, "s3://bucket", frames=frames))) == [
        f"dev-a-{n:05d}" for n in range(4)
    ]


def test_a_batch_number_is_not_reused_when_removals_arrive_before_the_snapshot(
    store: Any,
) -> None:
    """A synced folder may deliver a compaction's removals before its snapshot: the device's
    own record (how far it read its log) still keeps it from numbering a batch again."""
    frames = Frames(os.urandom(32))
    writer = ObjectRemote(store, "s3://bucket", "dev-a", frames, publish_every=0)
    for n in range(3):
        writer.push([of("dev-a", n)])
    writer.pull(pull_all_cursor(writer))  # publishes that it has read its 3 batches
    ObjectRemote(store, "s3://bucket", frames=frames).compact()
    snapshot = {n: bytes(obstore.get(store, n).bytes()) for n in names(store) if "snap" in n}
    obstore.delete(store, list(snapshot))  # not here yet
    ObjectRemote(store, "s3://bucket", "dev-a", frames).push([of("dev-a", 3)])
    assert [n for n in names(store) if n.startswith("log/")] == ["log/dev-a/000000000004"]
    for path, data in snapshot.items():
        obstore.put(store, path, data)
    assert len(ids(pull_all(ObjectRemote(store, "s3://bucket", frames=frames)))) == 4


def test_two_processes_of_one_device_store_a_mutation_once(store: Any) -> None:
    frames = Frames(os.urandom(32))
    cli = ObjectRemote(store, "s3://bucket", "dev-a", frames)
    daemon = ObjectRemote(store, "s3://bucket", "dev-a", frames)
    assert cli.push([of("dev-a", 0)]).stored == 1
    assert daemon.push([of("dev-a", 1)]).stored == 1  # batch 2
    result = cli.push([of("dev-a", 1), of("dev-a", 2)])  # number 2 is taken: reread, filter
    assert (result.stored, result.duplicates) == (1, 1)
    assert ids(pull_all(cli)) == ["dev-a-00000", "dev-a-00001", "dev-a-00002"]


def test_a_device_record_changes_only_when_the_device_has_read_further(store: Any) -> None:
    """A folder inside a git repository stays unmodified after a sync that brought nothing:
    each process (a `cairn sync now`) writes the device's record only when its read position
    moved, and records the position a pull ended at as soon as it is applied."""
    frames = Frames(os.urandom(32))
    writer = ObjectRemote(store, "s3://bucket", "dev-a", frames)
    writer.register_device("dev-a", "laptop")
    writer.push([of("dev-a", n) for n in range(3)])
    reader = ObjectRemote(store, "s3://bucket", "dev-b", frames)
    reader.register_device("dev-b", "desktop")
    page = reader.pull(None)
    reader.mark_read(page.cursor)  # the sync engine applied the page
    recorded = objects(store)["devices/dev-b"]
    for _process in range(2):  # later syncs that bring nothing, each a new process
        again = ObjectRemote(store, "s3://bucket", "dev-b", frames)
        assert again.pull(page.cursor).mutations == []
        assert objects(store)["devices/dev-b"] == recorded
    writer.push([of("dev-a", 3)])
    later = ObjectRemote(store, "s3://bucket", "dev-b", frames)
    moved = later.pull(page.cursor)
    later.mark_read(moved.cursor)
    assert objects(store)["devices/dev-b"] != recorded


def test_storage_that_ignores_put_if_absent_is_refused_before_anything_is_written(
    s3_server: S3Server, s3_without_conditional_writes: S3Server
) -> None:
    faulty = s3_without_conditional_writes.bucket()
    # The fault is real: through the proxy, a second put-if-absent overwrites the first.
    obstore.put(faulty, "probe-check", b"first", mode="create")
    obstore.put(faulty, "probe-check", b"second", mode="create")
    assert bytes(obstore.get(faulty, "probe-check").bytes()) == b"second"
    obstore.delete(faulty, "probe-check")

    for write in (
        lambda r: r.put_keyring(b"ring", None),
        lambda r: r.register_device("dev-a", "laptop"),
        lambda r: r.push([mutation(1)]),
    ):
        remote = ObjectRemote(faulty, "s3://faulty", frames=Frames(os.urandom(32)))
        with pytest.raises(StorageUnsupported) as refused:
            write(remote)
        assert "If-None-Match" in refused.value.message
        assert "conditional writes" in refused.value.message
        assert refused.value.exit_code == 8
        assert objects(faulty) == {}  # no keyring, batch, record or probe left behind
    with pytest.raises(StorageUnsupported):
        ObjectRemote(faulty, "s3://faulty").status()


def test_storage_that_honours_put_if_absent_passes_the_probe_and_keeps_no_probe(store: Any) -> None:
    remote = ObjectRemote(store, "s3://bucket", frames=Frames(os.urandom(32)))
    assert remote.status()["conditional_writes"] == "honoured"
    remote.register_device("dev-a", "laptop")
    assert sorted(objects(store)) == ["cairn.json", "devices/dev-a"]  # the probe removed
