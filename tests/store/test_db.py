"""Opening store files: migrations of old files, files from the future, corrupt and locked files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from cairn.embedding.onnx import OnnxEmbedder
from cairn.errors import SchemaTooNew, StoreCorrupt, StoreLocked
from cairn.service import Store
from cairn.store.db import Database, _statements
from cairn.store.migrations import MIGRATIONS


def _version_1_file(path: Path, embedder: OnnxEmbedder) -> None:
    """A store as the first schema wrote it: one memory with its vector, no FTS, no relations."""
    conn = sqlite3.connect(path)
    for statement in _statements(MIGRATIONS[0]):
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


def test_a_long_held_write_lock_is_reported_as_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cairn.db"
    Database(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        monkeypatch.setattr("cairn.store.db.BUSY_TIMEOUT_MS", 200)
        db = Database(path)
        with pytest.raises(StoreLocked) as info, db.write():
            pass
        assert "locked by another process" in info.value.message
    finally:
        holder.execute("ROLLBACK")
        holder.close()
