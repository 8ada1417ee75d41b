"""The sync server's storage contract (``cairn.server.storage``), for every backend.

Runs on each backend (``server_backend`` in tests/server/conftest.py): embedded SQLite and a
real PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.errors import InvalidInput, NotFound, QuotaExceeded, RemoteConflict, SchemaTooNew
from cairn.protocol import KeyringBlob, KeyringProof, WireMutation
from cairn.server import keys
from cairn.server.storage import Quota, ServerStorage
from cairn.server.storage.postgres_schema import MIGRATIONS as POSTGRES_MIGRATIONS
from cairn.server.storage.sqlite import SqliteStorage
from cairn.server.storage.sqlite_file import SqliteFile
from cairn.server.storage.sqlite_schema import MIGRATIONS

from ..conftest import envelope, server_storage_for

NOW = 1_700_000_000_000


@pytest.fixture
def server_storage(
    tmp_path: Path, server_backend: str, request: pytest.FixtureRequest
) -> Iterator[ServerStorage]:
    storage = server_storage_for(server_backend, tmp_path, request)
    yield storage
    storage.close()


def mutation(n: int, device: str = "dev-a", scope: str | None = None) -> WireMutation:
    return WireMutation(
        f"m-{device}-{n:05d}",
        device,
        f"{NOW + n:013d}-0000-{device}",
        f"e-{n}",
        scope,
        envelope(b"p"),
    )


def test_workspaces_are_named_uniquely(server_storage: ServerStorage) -> None:
    made = server_storage.create_workspace("w1", "team", NOW)
    assert server_storage.workspace("team") == made == server_storage.workspace_by_id("w1")
    with pytest.raises(InvalidInput, match="already exists"):
        server_storage.create_workspace("w2", "team", NOW)
    with pytest.raises(NotFound):
        server_storage.workspace("nobody")
    assert [w.name for w in server_storage.workspaces()] == ["team"]


def test_one_workspace_never_sees_another_workspaces_rows(server_storage: ServerStorage) -> None:
    a = server_storage.create_workspace("wa", "a", NOW)
    b = server_storage.create_workspace("wb", "b", NOW)
    server_storage.push(a.id, [mutation(1), mutation(2)], "dev-a", NOW)
    server_storage.push(b.id, [mutation(1)], None, NOW)  # the same mutation id, stored again
    server_storage.put_keyring(a.id, b"ring-a", None)
    key_a, _ = keys.issue(server_storage, a.id, "alice", ["admin"], NOW)
    assert [m.seq for m in server_storage.pull(b.id, 0, 100, None).mutations] == [1]
    assert server_storage.stats(b.id).devices == 0 and server_storage.stats(a.id).devices == 1
    assert server_storage.keyring(b.id) is None
    assert key_a.id not in {k.id for k in server_storage.keys(b.id)}
    with pytest.raises(NotFound):
        server_storage.revoke_key(b.id, key_a.id, NOW)
    assert server_storage.find_key(key_a.id) == key_a  # still live
    assert server_storage.totals().mutations == 3


def test_push_assigns_seq_once_per_new_mutation(server_storage: ServerStorage) -> None:
    ws = server_storage.create_workspace("w", "team", NOW)
    first = server_storage.push(ws.id, [mutation(1), mutation(2)], "dev-a", NOW)
    again = server_storage.push(ws.id, [mutation(2), mutation(3), mutation(3)], "dev-a", NOW + 5)
    assert (first.stored, first.duplicates, first.last_seq) == (2, 0, 2)
    assert (again.stored, again.duplicates, again.last_seq) == (1, 2, 3)
    page = server_storage.pull(ws.id, 0, 100, None)
    assert [(m.seq, m.mutation_id) for m in page.mutations] == [
        (1, "m-dev-a-00001"),
        (2, "m-dev-a-00002"),
        (3, "m-dev-a-00003"),
    ]
    (device,) = server_storage.devices(ws.id)
    assert (device.pushed, device.first_seen, device.last_push_at) == (3, NOW, NOW + 5)


def test_pushes_into_an_unknown_workspace_store_nothing(server_storage: ServerStorage) -> None:
    with pytest.raises(NotFound):
        server_storage.push("nowhere", [mutation(1)], None, NOW)
    assert server_storage.totals().mutations == 0


def test_concurrent_pushes_get_gapless_seqs_in_commit_order(
    server_storage: ServerStorage,
) -> None:
    ws = server_storage.create_workspace("w", "team", NOW)
    seen: list[int] = []

    def pusher(device: str) -> None:
        for batch in range(10):
            server_storage.push(
                ws.id, [mutation(batch * 5 + i, device) for i in range(5)], device, NOW
            )

    def reader() -> None:
        cursor, deadline = 0, time.monotonic() + 30
        while cursor < 200 and time.monotonic() < deadline:
            page = server_storage.pull(ws.id, cursor, 7, None)
            seen.extend(m.seq or 0 for m in page.mutations)
            cursor = int(page.cursor)

    threads = [threading.Thread(target=pusher, args=(f"dev-{i}",)) for i in range(4)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    watcher.join()
    assert seen == list(range(1, 201))


def test_keyring_compare_and_swap_keeps_every_version_with_its_proof(
    server_storage: ServerStorage,
) -> None:
    ws = server_storage.create_workspace("w", "team", NOW)
    other = server_storage.create_workspace("o", "other", NOW)
    assert server_storage.put_keyring(ws.id, b"one", None) == 1
    with pytest.raises(RemoteConflict):
        server_storage.put_keyring(ws.id, b"two", None)
    proof = KeyringProof(b"s" * 64, b"k" * 32, 2)
    assert server_storage.put_keyring(ws.id, b"two", 1, [1], proof) == 2
    restored = KeyringProof(b"t" * 64, b"k" * 32, 1)  # a rollback's copy keeps its number
    assert server_storage.put_keyring(ws.id, b"one again", 2, [], restored) == 3
    assert server_storage.keyring(ws.id) == KeyringBlob(b"one again", 3, (), restored)
    assert server_storage.keyring_versions(ws.id, 10) == [
        KeyringBlob(b"one again", 3, (), restored),
        KeyringBlob(b"two", 2, (1,), proof),
        KeyringBlob(b"one", 1, ()),
    ]
    assert [v.version for v in server_storage.keyring_versions(ws.id, 2)] == [3, 2]
    assert server_storage.keyring_versions(other.id, 10) == []


def test_devices_remember_pushes_pulls_and_names(server_storage: ServerStorage) -> None:
    ws = server_storage.create_workspace("w", "team", NOW)
    server_storage.register_device(ws.id, "dev-a", "laptop", NOW)
    server_storage.record_seen([], [(ws.id, "dev-a", NOW + 10, None)])
    server_storage.push(ws.id, [mutation(1)], "dev-a", NOW + 20)
    server_storage.record_seen([], [(ws.id, "dev-b", NOW + 30, None)])
    a, b = server_storage.devices(ws.id)
    assert (a.name, a.first_seen, a.last_seen, a.last_pull_at, a.pushed) == (
        "laptop",
        NOW,
        NOW + 20,
        NOW + 10,
        1,
    )
    assert (b.device_id, b.name, b.first_seen, b.last_pull_at) == ("dev-b", "", NOW + 30, NOW + 30)


def test_last_seen_of_many_keys_and_devices_is_one_write_and_never_goes_back(
    server_storage: ServerStorage,
) -> None:
    """One transaction records a batch of every workspace's keys and devices (more rows than
    one statement takes); an older time than the stored one changes nothing; a workspace
    deleted meanwhile is skipped, not an error."""
    ws = server_storage.create_workspace("w", "team", NOW)
    other = server_storage.create_workspace("o", "other", NOW)
    made = [keys.issue(server_storage, w.id, "k", ["read"], NOW)[0] for w in (ws, other)]
    gone = server_storage.create_workspace("g", "gone", NOW)
    server_storage.delete_workspace(gone.id, NOW, by="test")
    devices = [(ws.id, f"dev-{n:04d}", NOW + n, n) for n in range(1500)]
    writes = server_storage.transactions()["write"]
    server_storage.record_seen(
        [(k.workspace_id, k.id, NOW + 7) for k in made],
        [*devices, (other.id, "dev-o", NOW + 9, None), (gone.id, "dev-g", NOW + 9, 1)],
    )
    assert server_storage.transactions()["write"] == writes + 1
    listed = server_storage.devices(ws.id)
    assert [(d.device_id, d.last_seen, d.last_pull_at, d.read_position) for d in listed] == [
        (device, at, at, position) for _, device, at, position in devices
    ]
    assert [d.device_id for d in server_storage.devices(other.id)] == ["dev-o"]
    used = server_storage.find_keys([k.id for k in made])
    assert [used[k.id].last_used_at for k in made] == [NOW + 7, NOW + 7]
    server_storage.record_seen(
        [(k.workspace_id, k.id, NOW + 1) for k in made], [(ws.id, "dev-0000", NOW - 1, 99)]
    )
    assert server_storage.devices(ws.id)[0].last_pull_at == NOW
    assert server_storage.devices(ws.id)[0].read_position == 0  # an older pull's is not taken
    assert server_storage.find_keys([made[0].id, "000000000000"]) == {made[0].id: used[made[0].id]}


def test_revoking_and_touching_keys(server_storage: ServerStorage) -> None:
    ws = server_storage.create_workspace("w", "team", NOW)
    key, _ = keys.issue(server_storage, ws.id, "ci", ["read"], NOW)
    server_storage.record_seen([(ws.id, key.id, NOW + 1)], [])
    revoked = server_storage.revoke_key(ws.id, key.id, NOW + 2)
    assert (revoked.last_used_at, revoked.revoked_at) == (NOW + 1, NOW + 2)
    assert server_storage.revoke_key(ws.id, key.id, NOW + 3).revoked_at == NOW + 2


def test_the_database_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "server.db"
    first = SqliteStorage(path)
    ws = first.create_workspace("w", "team", NOW)
    first.push(ws.id, [mutation(1)], None, NOW)
    first.close()
    second = SqliteStorage(path)
    assert second.latest_seq(ws.id) == 1
    second.close()


def test_a_database_from_a_newer_server_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "server.db"
    SqliteStorage(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(SchemaTooNew, match="upgrade"):
        SqliteStorage(path)


def test_a_version_1_database_gains_revoked_key_ids(tmp_path: Path) -> None:
    """Migration 2 adds the keyring's revoked ids; a keyring stored before it has none."""
    path = tmp_path / "server.db"
    old = SqliteFile(path, MIGRATIONS[:1])
    with old.write() as conn:
        conn.execute(
            "INSERT INTO workspaces (id, name, mode, created_at) VALUES ('w', 't', 'e2e', 1)"
        )
        conn.execute("INSERT INTO keyrings (workspace_id, version, blob) VALUES ('w', 3, x'00')")
    old.close()
    storage = SqliteStorage(path)
    assert storage.keyring("w") == KeyringBlob(b"\x00", 3, ())
    assert storage.put_keyring("w", b"\x01", 3, [2, 1, 2]) == 4
    assert storage.keyring("w") == KeyringBlob(b"\x01", 4, (1, 2))
    storage.close()


def test_usage_counts_pushes_pulls_and_bytes_per_day(server_storage: ServerStorage) -> None:
    ws = server_storage.create_workspace("w", "team", NOW)
    day = 86_400_000
    server_storage.push(ws.id, [mutation(1), mutation(2)], "dev-a", NOW, "key-1")
    server_storage.push(ws.id, [mutation(2), mutation(3)], "dev-a", NOW + day, "key-1")
    server_storage.record_pull(ws.id, "key-2", 3, NOW + day)
    used = server_storage.usage(ws.id, 7, NOW + day)
    size = len(mutation(1).payload)
    assert (used.mutations, used.stored_bytes, used.entities, used.memories) == (3, 3 * size, 3, 3)
    assert [(d.pushes, d.mutations, d.bytes, d.pulled) for d in used.days] == [
        (1, 1, size, 3),  # the later day first
        (1, 2, 2 * size, 0),
    ]
    assert [d.day for d in server_storage.usage(ws.id, 1, NOW + day).days] == [used.days[0].day]


def test_a_push_over_the_quota_stores_nothing(server_storage: ServerStorage) -> None:
    ws = server_storage.create_workspace("w", "team", NOW)
    server_storage.set_quota(ws.id, Quota(max_mutations=3))
    server_storage.push(ws.id, [mutation(1), mutation(2)], None, NOW)
    with pytest.raises(QuotaExceeded, match="may hold 3 changes"):
        server_storage.push(ws.id, [mutation(3), mutation(4)], None, NOW)
    assert server_storage.latest_seq(ws.id) == 2
    assert server_storage.push(ws.id, [mutation(2), mutation(3)], None, NOW).stored == 1
    size = len(mutation(1).payload)
    server_storage.set_quota(ws.id, Quota(max_bytes=4 * size))
    with pytest.raises(QuotaExceeded, match="bytes"):
        server_storage.push(ws.id, [mutation(5), mutation(6)], None, NOW)
    server_storage.set_quota(ws.id, Quota())
    assert server_storage.push(ws.id, [mutation(5), mutation(6)], None, NOW).stored == 2
    assert server_storage.usage(ws.id, 1, NOW).quota == Quota()


def test_the_audit_log_says_who_did_what_newest_first(server_storage: ServerStorage) -> None:
    ws = server_storage.create_workspace("w", "team", NOW)
    other = server_storage.create_workspace("o", "other", NOW)
    server_storage.push(ws.id, [mutation(1)], "dev-a", NOW + 1, "key-w")
    server_storage.record_pull(ws.id, "key-r", 1, NOW + 2)
    server_storage.audit(ws.id, "key-a", "key_revoke", {"revoked": "key-w"}, NOW + 3)
    server_storage.audit(other.id, "key-o", "key_create", {}, NOW + 4)
    log = server_storage.audit_log(ws.id, 10, None)
    assert [(e.at, e.key_id, e.action) for e in log] == [
        (NOW + 3, "key-a", "key_revoke"),
        (NOW + 2, "key-r", "pull"),
        (NOW + 1, "key-w", "push"),
    ]
    assert log[2].detail == {"stored": 1, "duplicates": 0, "device": "dev-a"}
    assert [e.action for e in server_storage.audit_log(ws.id, 1, NOW + 3)] == ["pull"]


def test_a_version_4_database_keeps_its_keyring_as_an_unsigned_version(tmp_path: Path) -> None:
    """Migration 5 keeps every keyring version; the one stored before it has no proof."""
    path = tmp_path / "server.db"
    old = SqliteFile(path, MIGRATIONS[:4])
    with old.write() as conn:
        conn.execute(
            "INSERT INTO workspaces (id, name, mode, created_at) VALUES ('w', 't', 'e2e', 1)"
        )
        conn.execute(
            "INSERT INTO keyrings (workspace_id, version, blob, revoked) "
            "VALUES ('w', 6, x'00', '[1]')"
        )
    old.close()
    storage = SqliteStorage(path)
    assert storage.keyring_versions("w", 10) == [KeyringBlob(b"\x00", 6, (1,))]
    assert storage.put_keyring("w", b"\x01", 6) == 7
    storage.close()


def test_a_device_remembers_how_far_it_pulled(server_storage: ServerStorage) -> None:
    ws = server_storage.create_workspace("w", "team", NOW)
    server_storage.record_seen([], [(ws.id, "dev-a", NOW, 7)])
    server_storage.push(ws.id, [mutation(1)], "dev-a", NOW + 1)  # a push keeps it
    server_storage.record_seen([], [(ws.id, "dev-a", NOW + 1, None)])  # a pull with no position too
    (device,) = server_storage.devices(ws.id)
    assert (device.read_position, device.last_pull_at, device.last_seen) == (7, NOW + 1, NOW + 1)
    server_storage.record_seen([], [(ws.id, "dev-a", NOW + 2, 9)])
    assert server_storage.devices(ws.id)[0].read_position == 9


def test_the_audit_log_filters_by_action_and_key(server_storage: ServerStorage) -> None:
    ws = server_storage.create_workspace("w", "team", NOW)
    server_storage.push(ws.id, [mutation(1)], "dev-a", NOW + 1, "key-w")
    server_storage.record_pull(ws.id, "key-r", 1, NOW + 2)
    server_storage.push(ws.id, [mutation(2)], "dev-a", NOW + 3, "key-x")
    pushes = server_storage.audit_log(ws.id, 10, None, action="push")
    assert [(e.at, e.key_id) for e in pushes] == [(NOW + 3, "key-x"), (NOW + 1, "key-w")]
    by_w = server_storage.audit_log(ws.id, 10, None, key_id="key-w")
    assert [e.action for e in by_w] == ["push"]
    assert server_storage.audit_log(ws.id, 10, None, action="pull", key_id="key-w") == []


def test_activity_counts_pushes_pulls_and_mutations_per_hour(
    server_storage: ServerStorage,
) -> None:
    ws = server_storage.create_workspace("w", "team", NOW)
    other = server_storage.create_workspace("o", "other", NOW)
    hour = 3_600_000
    start = NOW - NOW % hour
    server_storage.push(ws.id, [mutation(1), mutation(2)], "dev-a", start + 5, "k")
    server_storage.push(ws.id, [mutation(2), mutation(3)], "dev-a", start + 6, "k")  # 1 new
    server_storage.record_pull(ws.id, "k", 3, start + 7)
    server_storage.record_pull(ws.id, "k", 0, start + 2 * hour)
    server_storage.push(other.id, [mutation(1)], "dev-o", start + 8, "o")
    found = server_storage.activity(ws.id, start)
    assert [(a.hour, a.pushes, a.pulls, a.mutations) for a in found] == [
        (start, 2, 1, 3),
        (start + 2 * hour, 0, 1, 0),
    ]
    assert server_storage.activity(ws.id, start + hour) == found[1:]


def test_the_schema_version_is_the_number_of_migrations(server_storage: ServerStorage) -> None:
    assert server_storage.schema_version() == len(MIGRATIONS) == len(POSTGRES_MIGRATIONS)


def test_summaries_list_every_workspace_with_its_size_and_quota(
    server_storage: ServerStorage,
) -> None:
    ws = server_storage.create_workspace("w", "team", NOW)
    other = server_storage.create_workspace("o", "other", NOW + 1, "hosted")
    server_storage.push(ws.id, [mutation(1), mutation(2)], None, NOW)
    server_storage.set_quota(other.id, Quota(max_mutations=10))
    team, hosted = server_storage.summaries()
    size = len(mutation(1).payload)
    assert (team.workspace, team.latest_seq, team.stored_bytes, team.quota) == (
        ws,
        2,
        2 * size,
        Quota(),
    )
    assert (hosted.workspace.mode, hosted.latest_seq, hosted.quota) == ("hosted", 0, Quota(10))
    assert server_storage.summary(ws.id) == team
    with pytest.raises(NotFound):
        server_storage.summary("nope")
    assert server_storage.usage_days(ws.id, 7, NOW) == server_storage.usage(ws.id, 7, NOW).days
