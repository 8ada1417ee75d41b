"""Every change and its outbox mutation commit together; several processes share one file."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.errors import NotFound, StoreError
from cairn.memory_rules import NewMemory
from cairn.store import outbox, replica
from cairn.store.db import Database


def _counts(store: Store) -> tuple[int, int, int, int]:
    conn = store.db.conn
    return (
        conn.execute("SELECT count(*) FROM memories").fetchone()[0],
        conn.execute("SELECT count(*) FROM memory_vectors").fetchone()[0],
        conn.execute("SELECT count(*) FROM memories_fts_docsize").fetchone()[0],  # indexed docs
        conn.execute("SELECT count(*) FROM outbox").fetchone()[0],
    )


def test_each_change_writes_exactly_one_outbox_entry(store: Store) -> None:
    first = store.remember(
        "Retries use exponential backoff", kind="decision", tags=["net"], topic_key="retries"
    )
    second = store.remember("Retries use exponential backoff with jitter", topic_key="retries")
    store.remember("Retries use exponential backoff", tags=["http"])  # identical: adds a tag
    store.forget(second.memory.id)
    rows = store.db.conn.execute("SELECT entity, entity_id, hlc FROM outbox ORDER BY seq")
    rows = rows.fetchall()
    assert [(r[0], r[1]) for r in rows] == [
        ("memory", first.memory.id),
        ("memory", second.memory.id),
        ("relation", f"{second.memory.id}|supersedes|{first.memory.id}"),
        ("memory", first.memory.id),
        ("memory", second.memory.id),
    ]
    hlcs = [r[2] for r in rows]
    assert hlcs == sorted(hlcs) and len(set(hlcs)) == len(hlcs)
    with store.db.read() as conn:
        queued = outbox.pending(conn)
        states = replica.memory_states(conn, [first.memory.id])
    # A push sends each entity once, as its whole current state.
    assert [p.mutation.entity_id for p in queued] == [rows[2][1], rows[3][1], rows[4][1]]
    _rowid, state = states[first.memory.id]
    assert state.memory.content == "Retries use exponential backoff"
    assert state.memory.tags == ("http", "net")
    assert state.vector is not None and len(state.vector) == 384 * 4
    assert state.memory.model_id == store.embedder.model_id


def test_a_failure_inside_the_transaction_leaves_no_trace(store: Store) -> None:
    store.remember("Before the fault")
    before = _counts(store)
    # A real fault at the last step of the transaction: the outbox insert aborts.
    store.db.conn.execute(
        "CREATE TRIGGER fail_outbox BEFORE INSERT ON outbox "
        "BEGIN SELECT RAISE(ABORT, 'simulated disk full'); END"
    )
    with pytest.raises(StoreError) as info:  # translated, with SQLite's error as the cause
        store.remember("This memory must not half-exist", tags=["x"])
    assert isinstance(info.value.__cause__, sqlite3.IntegrityError)
    assert "simulated disk full" in info.value.message
    assert _counts(store) == before
    assert store.db.conn.execute("SELECT count(*) FROM memory_tags").fetchone()[0] == 0
    assert [h.memory.content for h in store.recall("half-exist memory")] == ["Before the fault"]
    store.db.conn.execute("DROP TRIGGER fail_outbox")
    store.remember("After the fault")
    assert _counts(store)[0] == before[0] + 1


def test_forget_erases_content_tags_and_vector_but_keeps_a_tombstone(store: Store) -> None:
    result = store.remember("The staging password is in 1Password", tags=["secret"])
    store.forget(result.memory.id)
    row = store.db.conn.execute(
        "SELECT content, deleted, content_hash FROM memories WHERE id = ?", (result.memory.id,)
    ).fetchone()
    assert row == ("", 1, "")
    assert _counts(store)[1:3] == (0, 0)
    store.db.conn.execute("INSERT INTO memories_fts(memories_fts) VALUES ('integrity-check')")
    assert store.list() == []
    assert store.recall("staging password") == []
    with pytest.raises(NotFound) as info:
        store.get(result.memory.id)
    assert "was forgotten" in info.value.message


WRITER = """
import sys
from pathlib import Path
from cairn.embedding.onnx import OnnxEmbedder
from cairn.device_store import Store
from cairn.store.db import Database
worker, count = int(sys.argv[2]), int(sys.argv[3])
with Store(Database(Path(sys.argv[1])), OnnxEmbedder(), project=f"p{worker}") as store:
    for i in range(count):
        store.remember(f"Worker {worker} learned fact number {i} about service {i * 7}")
"""


def test_two_processes_write_one_file_concurrently(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    path = tmp_path / "shared.db"
    Database(path).close()
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w), "25"]) for w in (1, 2)
    ]
    assert [p.wait(120) for p in procs] == [0, 0]
    with Store(Database(path), embedder) as store:
        assert _counts(store) == (50, 50, 50, 50)
        seqs = [r[0] for r in store.db.conn.execute("SELECT seq FROM memories")]
        assert len(set(seqs)) == 50
        queued = {r[0] for r in store.db.conn.execute("SELECT entity_id FROM outbox")}
        assert queued == {r[0] for r in store.db.conn.execute("SELECT id FROM memories")}
        hits = store.recall("worker 2 fact number 13 about service 91", limit=3)
        assert hits[0].memory.content == "Worker 2 learned fact number 13 about service 91"


def test_an_open_store_sees_writes_and_forgets_from_another_process(
    tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    path = tmp_path / "cairn.db"
    with Store(Database(path), embedder) as reader:
        reader.remember("Our CDN is Fastly")
        assert len(reader.recall("content delivery network")) == 1  # index built
        with Store(Database(path), embedder) as writer:
            added = writer.remember("The image CDN caches for one hour", kind="fact")
            writer.remember_many([NewMemory(f"Unrelated note {i}") for i in range(3)])
        hits = reader.recall("how long does the CDN cache images", limit=1)
        assert hits[0].memory.id == added.memory.id
        assert hits[0].match.semantic_rank == 1
        with Store(Database(path), embedder) as writer:
            writer.forget(added.memory.id)
        assert all(h.memory.id != added.memory.id for h in reader.recall("CDN cache images"))


def test_field_clocks_record_which_fields_changed_when(store: Store) -> None:
    made = store.remember("Service owners are listed in OWNERS.md", tags=["docs"])
    tagged = store.remember("Service owners are listed in OWNERS.md", tags=["ownership"])
    created_hlc, hlc, clocks = store.db.conn.execute(
        "SELECT created_hlc, hlc, field_hlc FROM memories WHERE id = ?", (made.memory.id,)
    ).fetchone()
    # Tags merge as a set, so adding one moves only the memory's latest clock.
    assert created_hlc == made.memory.hlc < hlc == tagged.memory.hlc
    assert json.loads(clocks) == {}
    edited = store.edit(made.memory.id, kind="decision")
    clocks = store.db.conn.execute(
        "SELECT field_hlc FROM memories WHERE id = ?", (made.memory.id,)
    ).fetchone()[0]
    assert json.loads(clocks) == {"kind": edited.hlc}  # the rest: created_hlc
