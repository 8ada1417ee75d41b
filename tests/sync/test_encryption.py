"""End-to-end encryption through a real sync server: it stores nothing readable, tampering is
caught and reported, and passphrase changes and key rotation keep everything readable."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo, sql

from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.errors import RemoteUnreachable, WrongPassphrase
from cairn.protocol import KeyringBlob, sealed_key_id
from cairn.remotes.http import HttpRemote
from cairn.remotes.memory import MemoryRemote
from cairn.server.storage.sqlite import SqliteStorage
from cairn.store.db import Database
from cairn.sync.engine import Syncer
from cairn.sync.keys import join, open_keys

from ..conftest import SyncServer
from .conftest import FAST_KDF, PASSPHRASE

MARKERS = ["zebracorn-7781", "QUOKKA_SECRET_42", "tangerine-migration-plan"]
TAG = "hushtag-5521"
PROJECT = "project-nightjar"


def _device(
    tmp_path: Path, embedder: OnnxEmbedder, name: str, remote: object, **join_args: object
) -> tuple[Store, Syncer]:
    store = Store(Database(tmp_path / f"{name}.db"), embedder, project=PROJECT)
    keys, _ = join(remote, **join_args)  # type: ignore[arg-type]
    return store, Syncer(store, remote, keys, page_size=50)  # type: ignore[arg-type]


def _forms(marker: str) -> list[bytes]:
    """A string as it could sit in a file: UTF-8, UTF-16 either way, base64 at any alignment."""
    raw = marker.encode()
    forms = [raw, marker.encode("utf-16-le"), marker.encode("utf-16-be")]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)
        forms.append(encoded[4:-4] if shift else encoded[:-4])  # the part that only the marker sets
    return forms


def _stored_bytes(server: SyncServer, request: pytest.FixtureRequest) -> bytes:
    """Everything the server's database holds, as raw bytes: SQLite's files (the database,
    its WAL and any journal); for PostgreSQL, every value of every table (read as a superuser,
    past row-level security) and the database's files on disk after a checkpoint."""
    if isinstance(server.storage, SqliteStorage):
        files = [p for p in server.data.iterdir() if p.name.startswith("server.db")]
        return b"".join(p.read_bytes() for p in files)
    postgres = request.getfixturevalue("postgres")
    name = conninfo.conninfo_to_dict(server.storage.path)["dbname"]
    chunks: list[bytes] = []
    with psycopg.connect(conninfo.make_conninfo(postgres.admin_url, dbname=name)) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        ).fetchall()
        assert len(tables) >= 5  # the scan reads the tables the server made
        for (table,) in tables:
            for row in conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table))):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        chunks.append(bytes(value))
                    elif isinstance(value, dict | list):
                        chunks.append(json.dumps(value, ensure_ascii=False).encode())
                    else:
                        chunks.append(str(value).encode())
        conn.execute("CHECKPOINT")  # what the WAL holds reaches the table files
        folder = conn.execute("SHOW data_directory").fetchone()[0]
        oid = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (name,)).fetchone()[0]
    files = sorted((Path(folder) / "base" / str(oid)).iterdir())
    assert files  # the scan reads the database's files
    return b"".join(chunks) + b"".join(p.read_bytes() for p in files if p.is_file())


@pytest.mark.parametrize("server_backend", ["sqlite", "postgres"])
def test_the_server_stores_nothing_readable(
    tmp_path: Path, embedder: OnnxEmbedder, sync_server: SyncServer, request: pytest.FixtureRequest
) -> None:
    remote_a = HttpRemote(sync_server.url, sync_server.admin_key)
    remote_b = HttpRemote(sync_server.url, sync_server.admin_key)
    a, sync_a = _device(tmp_path, embedder, "a", remote_a, passphrase=PASSPHRASE, kdf=FAST_KDF)
    b, sync_b = _device(tmp_path, embedder, "b", remote_b, passphrase=PASSPHRASE)
    for marker in MARKERS:
        a.remember(f"Remember {marker} when deploying", tags=[TAG], topic_key=marker)
    b.remember(f"{MARKERS[0]} also matters on B", tags=[TAG])
    for _ in range(2):
        sync_a.push(), sync_b.push(), sync_a.pull(), sync_b.pull()
    assert {m.content for m in b.list()} == {m.content for m in a.list()}  # it did sync
    data = _stored_bytes(sync_server, request)
    assert sync_a.device_id.encode() in data  # the scan sees what the server stored
    for secret in [*MARKERS, TAG, PROJECT, "deploying"]:
        for form in _forms(secret):
            assert form not in data, f"{secret!r} is readable on the server as {form!r}"


def test_tampered_swapped_and_truncated_payloads_are_reported_and_the_rest_applies(
    tmp_path: Path, embedder: OnnxEmbedder, sync_server: SyncServer
) -> None:
    remote = HttpRemote(sync_server.url, sync_server.admin_key)
    a, sync_a = _device(tmp_path, embedder, "a", remote, passphrase=PASSPHRASE, kdf=FAST_KDF)
    for i in range(10):
        a.remember(f"Fact {i} about the ingest pipeline")
    sync_a.push()
    db = sqlite3.connect(sync_server.storage.path)
    rows = db.execute("SELECT seq, payload FROM mutations ORDER BY seq").fetchall()
    flipped = bytearray(rows[0][1])
    flipped[len(flipped) // 2] ^= 1
    db.execute("UPDATE mutations SET payload = ? WHERE seq = ?", (bytes(flipped), rows[0][0]))
    db.execute("UPDATE mutations SET payload = ? WHERE seq = ?", (rows[2][1], rows[1][0]))
    db.execute("UPDATE mutations SET payload = ? WHERE seq = ?", (rows[1][1], rows[2][0]))
    db.execute("UPDATE mutations SET payload = ? WHERE seq = ?", (rows[3][1][:40], rows[3][0]))
    db.commit()
    db.close()

    b, sync_b = _device(
        tmp_path,
        embedder,
        "b",
        HttpRemote(sync_server.url, sync_server.admin_key),
        passphrase=PASSPHRASE,
    )
    report = sync_b.pull()
    assert (report.failed, report.applied) == (4, 6)
    letters = sync_b.dead_letters()
    assert {d.code for d in letters} == {"payload_tampered"}
    assert {d.direction for d in letters} == {"pull"} and len(letters) == 4
    assert b.count() == 6


def test_a_wrong_passphrase_fails_cleanly_and_the_recovery_key_joins(
    tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    remote = MemoryRemote()
    keys, recovery = join(remote, PASSPHRASE, kdf=FAST_KDF)
    assert recovery is not None
    with pytest.raises(WrongPassphrase, match="did not unlock"):
        join(remote, "not the passphrase")
    joined, again = join(remote, recovery=recovery)
    assert joined == keys and again is None


def test_passphrase_change_and_key_rotation_keep_every_memory_readable(
    tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    remote = MemoryRemote()
    a, sync_a = _device(tmp_path, embedder, "a", remote, passphrase=PASSPHRASE, kdf=FAST_KDF)
    b, sync_b = _device(tmp_path, embedder, "b", remote, passphrase=PASSPHRASE)
    a.remember("Written under the first key")
    sync_a.push()
    sync_a.envelopes.change_passphrase("a brand new passphrase")
    assert sync_a.envelopes.rotate() == {"current_key_id": 2, "revoked_key_ids": [1]}
    a.remember("Written under the second key")
    sync_a.push()
    assert sync_b.pull().applied == 2  # B learns key 2 from the keyring by itself
    with pytest.raises(WrongPassphrase):
        join(remote, PASSPHRASE)
    c, sync_c = _device(tmp_path, embedder, "c", remote, passphrase="a brand new passphrase")
    sync_c.pull()
    expected = {"Written under the first key", "Written under the second key"}
    assert {m.content for m in c.list()} == expected == {m.content for m in b.list()}


def test_a_device_that_missed_a_rotation_seals_again_when_its_old_key_is_refused(
    tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    remote = MemoryRemote()
    a, sync_a = _device(tmp_path, embedder, "a", remote, passphrase=PASSPHRASE, kdf=FAST_KDF)
    b, sync_b = _device(tmp_path, embedder, "b", remote, passphrase=PASSPHRASE)
    assert sync_a.envelopes.rotate() == {"current_key_id": 2, "revoked_key_ids": [1]}
    b.remember("Written by a device that still seals with key 1")
    assert sync_b.envelopes.keys.current == 1  # type: ignore[union-attr]
    report = sync_b.push()
    assert (report.pushed, report.dead_lettered) == (1, 0)
    assert (
        sync_b.envelopes.keys.current == 2
    )  # it re-read the keyring when the remote refused key 1
    (stored,) = remote.pull(None).mutations
    assert sealed_key_id(stored.payload) == 2
    assert sync_a.pull().applied == 1
    assert [m.content for m in a.list()] == ["Written by a device that still seals with key 1"]


def test_rotating_without_revoking_lets_older_keys_still_write(
    tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    remote = MemoryRemote()
    _a, sync_a = _device(tmp_path, embedder, "a", remote, passphrase=PASSPHRASE, kdf=FAST_KDF)
    b, sync_b = _device(tmp_path, embedder, "b", remote, passphrase=PASSPHRASE)
    assert sync_a.envelopes.rotate(revoke=False) == {"current_key_id": 2, "revoked_key_ids": []}
    sync_a.envelopes.change_passphrase("another passphrase")  # keeps what the keyring revoked
    assert sync_a.envelopes.rotate() == {"current_key_id": 3, "revoked_key_ids": [1, 2]}
    assert remote.get_keyring().revoked == (1, 2)  # type: ignore[union-attr]
    b.remember("Sealed with key 1, then again with key 3")
    assert sync_b.push().pushed == 1
    assert sealed_key_id(remote.pull(None).mutations[0].payload) == 3


class _Offline(MemoryRemote):
    """A remote that stopped answering (for reads of the keyring)."""

    def get_keyring(self) -> KeyringBlob | None:
        raise RemoteUnreachable("the remote is down")


def test_opening_keys_offline_uses_the_cached_keyring_and_without_one_is_transient(
    tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    remote = MemoryRemote()
    keys, _recovery = join(remote, PASSPHRASE, kdf=FAST_KDF)
    offline = _Offline()
    with Store(Database(tmp_path / "a.db"), embedder) as store:
        # Never online since setup: nothing cached. Offline is a reason to retry, not a
        # missing setup (which would stop a sync worker until the settings change).
        with pytest.raises(RemoteUnreachable):
            open_keys(store, offline, keys.master, keys.keyring_id)
        assert open_keys(store, remote, keys.master, keys.keyring_id).keyring_id == keys.keyring_id
        cached = open_keys(store, offline, keys.master, keys.keyring_id)  # the copy from then
        assert cached.keyring_id == keys.keyring_id
