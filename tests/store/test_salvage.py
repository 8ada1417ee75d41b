"""Reading a damaged store row by row: what reads comes back exactly, what does not is counted."""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from cairn.embedding.onnx import OnnxEmbedder
from cairn.replication import MemoryState
from cairn.store import replica, salvage

from ..damage import COUNT, damage, fill


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, embedder: OnnxEmbedder) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("salvage")
    healthy, damaged = folder / "healthy.db", folder / "damaged.db"
    fill(healthy, embedder)
    shutil.copyfile(healthy, damaged)
    damage(damaged)
    return healthy, damaged


def _states(path: Path) -> dict[str, MemoryState]:
    conn = sqlite3.connect(path)
    try:
        ids = [r[0] for r in conn.execute("SELECT id FROM memories")]
        return {k: state for k, (_rowid, state) in replica.memory_states(conn, ids).items()}
    finally:
        conn.close()


def _relations(path: Path) -> set[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return set(
            conn.execute("SELECT from_id, to_id, type, created_at, hlc, deleted FROM relations")
        )
    finally:
        conn.close()


def test_a_healthy_store_reads_whole(files: tuple[Path, Path]) -> None:
    healthy, _ = files
    assert salvage.check(healthy) == []
    found = salvage.read(healthy)
    assert {s.memory.id: s for s in found.memories} == _states(healthy)
    assert {
        (r.from_id, r.to_id, r.type, r.created_at, r.hlc, int(r.deleted)) for r in found.relations
    } == _relations(healthy)
    assert set(found.lost.values()) == {0}
    assert found.meta["device_id"]


def test_a_damaged_store_gives_back_exactly_its_readable_rows_and_counts_the_rest(
    files: tuple[Path, Path],
) -> None:
    healthy, damaged = files
    assert salvage.check(damaged)  # quick_check names the damaged pages
    before = damaged.read_bytes()
    found = salvage.read(damaged)
    assert damaged.read_bytes() == before  # read-only
    original = _states(healthy)
    recovered = {s.memory.id: s for s in found.memories}
    assert 0 < len(recovered) < COUNT
    assert len(recovered) + found.lost["memories"] == COUNT
    for memory_id, state in recovered.items():
        expected = original[memory_id]
        if state.vector is None:  # its vector's page was damaged: the memory comes without it
            assert state.memory.model_id is None
            memory = replace(state.memory, model_id=expected.memory.model_id)
            state = replace(state, memory=memory, vector=expected.vector)
        assert state == expected
    relations = {
        (r.from_id, r.to_id, r.type, r.created_at, r.hlc, int(r.deleted)) for r in found.relations
    }
    assert relations <= _relations(healthy)
    assert len(relations) + found.lost["relations"] == len(_relations(healthy))


def test_a_file_that_is_no_database_reads_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "cairn.db"
    path.write_bytes(b"a shopping list, not a store\n" * 500)
    assert "not a database" in " ".join(salvage.check(path))
    found = salvage.read(path)
    assert found.memories == [] and found.relations == [] and found.meta == {}
