"""Opening store files: migrations of old files, files from the future, corrupt and locked files."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.errors import SchemaTooNew, StoreCorrupt, StoreLocked
from cairn.store.db import Database, statements
from cairn.store.migrations import MIGRATIONS

from ..damage import damage, fill


def _version_1_file(path: Path, embedder: OnnxEmbedder) -> None:
    """A store as the first schema wrote it: one memory with its vector, no FTS, no relations."""
    conn = sqlite3.connect(path)
    for statement in statements(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO memories(id, content, kind, project, topic_key, source, created_at, "
        "updated_at, deleted, content_hash, model_id, created_hlc, hlc, seq) VALUES "
        "('018f0000-0000-7000-8000-000000000001', 'The billing cron job runs at 03:00 UTC', "
        "'fact', 'ops', NULL, 'cli', 1700000000000, 1700000000000, 0, 'h', ?, "
        "'1700000000000-0000-dev', '1700000000000-0000-dev', 1)",
        (embedder.model_id,),
    )
    vector = embedder.embed(["The billing cron job runs at 03:00 UTC"])[0]
    conn.execute(
        "INSERT INTO memory_vectors VALUES (1, ?, ?)",
        (embedder.model_id, np.asarray(vector, "<f4").tobytes()),
    )
    conn.commit()
    conn.close()


def test_old_file_is_migrated_and_its_memories_become_searchable(
    tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    path = tmp_path / "old.db"
    _version_1_file(path, embedder)
    with Store(Database(path), embedder, project="ops") as store:
        version = store.db.conn.execute("PRAGMA user_version").fetchone()[0]
        assert version == len(MIGRATIONS)
        hits = store.recall("billing cron")
        assert hits and hits[0].memory.content.startswith("The billing cron job")
        assert hits[0].match.keyword_rank == 1  # the FTS index was built from the old rows
        new = store.remember("Invoices are emailed on the first of the month")
        other = store.remember("Monthly invoices", topic_key="invoices")
        store.relate(new.memory.id, other.memory.id, "relates_to")  # relations table exists
        assert store.relations(new.memory.id)[0].type == "relates_to"


def test_file_from_a_newer_cairn_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(SchemaTooNew) as info:
        Database(path)
    assert "upgrade Cairn" in info.value.message
    assert path.read_bytes() == before


def test_corrupt_file_gets_a_clear_error_and_is_not_modified(tmp_path: Path) -> None:
    path = tmp_path / "cairn.db"
    path.write_bytes(b"this is not a database, it is a shopping list\n" * 200)
    before = path.read_bytes()
    with pytest.raises(StoreCorrupt) as info:
        Database(path)
    assert "not a readable Cairn store" in info.value.message
    assert path.read_bytes() == before


def test_a_write_locked_past_its_bound_fails_clearly_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "cairn.db"
    Database(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        db = Database(path, write_wait=0.3)
        with pytest.raises(StoreLocked) as info, db.write() as conn:
            conn.execute("INSERT INTO meta(key, value) VALUES ('k', 'v')")
        assert "locked by another process" in info.value.message
        assert "nothing was written" in info.value.message
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with db.read() as conn:
        assert conn.execute("SELECT count(*) FROM meta WHERE key = 'k'").fetchone()[0] == 0


def test_reads_go_on_while_a_write_waits_for_another_writer(tmp_path: Path) -> None:
    """A write waiting for another connection's lock must not hold up this store's readers
    (the MCP server and the HTTP API share one Database between their threads)."""
    path = tmp_path / "cairn.db"
    db = Database(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    outcome: list[BaseException | None] = []

    def write() -> None:
        try:
            with db.write() as conn:
                conn.execute("INSERT INTO meta(key, value) VALUES ('waited', 'yes')")
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            outcome.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(0.5)  # ordering only: let the writer start waiting
    with db.read() as conn:
        assert conn.execute("SELECT count(*) FROM meta WHERE key = 'waited'").fetchone()[0] == 0
    assert writer.is_alive()  # the read finished while the write still waited
    holder.execute("COMMIT")
    holder.close()
    writer.join(timeout=60)
    assert outcome == [None]
    with db.read() as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'waited'").fetchone()[0] == "yes"
    db.close()


def test_damaged_pages_are_reported_as_damaged_and_leave_the_connection_usable(
    tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    path = tmp_path / "cairn.db"
    fill(path, embedder)
    damage(path)
    db = Database(path)  # the header is intact: opening works, reading the damage does not
    with pytest.raises(StoreCorrupt) as info, db.read() as conn:
        conn.execute("SELECT count(*) FROM memories WHERE content LIKE '%port%'").fetchone()
    assert "is damaged" in info.value.message and "cairn repair" in info.value.message
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    with pytest.raises(StoreCorrupt) as info, db.write() as conn:
        conn.execute("UPDATE memories SET kind = 'note'")
    assert "cannot rollback" not in info.value.message
    assert not db.conn.in_transaction
    with db.read() as conn:  # what is still readable still reads
        assert conn.execute("SELECT value FROM meta WHERE key = 'device_id'").fetchone()
    db.close()
