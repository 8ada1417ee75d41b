"""Replicated state in the store: reading whole states for a push, writing merged ones from a pull.

Writes from a pull log nothing in the outbox (the change came from the remote); the merge
engine (``cairn.sync.merge``) decides what to write, this module only writes it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence

from cairn.hlc import HLC
from cairn.replication import Conflict, MemoryState, RelationState, Revision
from cairn.store.memories import build_memories, next_seq, rows_in, tags_for

_STATE_COLUMNS = (
    "m.rowid, m.id, m.content, m.kind, m.project, m.topic_key, m.source, m.created_at, "
    "m.updated_at, m.deleted, m.content_hash, m.model_id, m.hlc, m.created_hlc, m.field_hlc, "
    "m.ancestors, v.vector"
)


def memory_states(
    conn: sqlite3.Connection, ids: Sequence[str]
) -> dict[str, tuple[int, MemoryState]]:
    """id -> (rowid, whole state with vector) for the ids this store has."""
    rows = list(
        rows_in(
            conn,
            f"SELECT {_STATE_COLUMNS} FROM memories m LEFT JOIN memory_vectors v "
            "ON v.memory_rowid = m.rowid WHERE m.id IN ({marks})",
            ids,
        )
    )
    built = build_memories([r[:13] for r in rows], tags_for(conn, [r[0] for r in rows]))
    revisions = _revisions_of(conn, [m.id for m in built])
    return {
        memory.id: (
            r[0],
            MemoryState(
                memory,
                r[13],
                json.loads(r[14]),
                tuple(json.loads(r[15])),
                r[16],
                tuple(revisions.get(memory.id, ())),
            ),
        )
        for r, memory in zip(rows, built, strict=True)
    }


def relation_states(conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, RelationState]:
    found: dict[str, RelationState] = {}
    for key in keys:
        from_id, type_, to_id = key.split("|", 2)
        row = conn.execute(
            "SELECT created_at, deleted, hlc FROM relations WHERE from_id = ? AND to_id = ? "
            "AND type = ?",
            (from_id, to_id, type_),
        ).fetchone()
        if row:
            found[key] = RelationState(from_id, to_id, type_, row[0], bool(row[1]), row[2])
    return found


def _row(state: MemoryState) -> tuple[object, ...]:
    m = state.memory
    return (
        m.id,
        m.content,
        m.kind,
        m.project,
        m.topic_key,
        m.source,
        m.created_at,
        m.updated_at,
        int(m.deleted),
        m.content_hash,
        m.model_id if state.vector is not None else None,
        state.created_hlc,
        state.hlc,
        json.dumps(state.field_hlc, sort_keys=True),
        json.dumps(list(state.ancestors)),
    )


def insert_states(conn: sqlite3.Connection, states: Sequence[MemoryState]) -> None:
    """Write memories this store has never seen, in bulk: rows, tags, vectors, keyword index."""
    if not states:
        return
    first_rowid, first_seq = conn.execute(
        "SELECT coalesce(max(rowid), 0) + 1, coalesce(max(seq), 0) + 1 FROM memories"
    ).fetchone()
    conn.executemany(
        "INSERT INTO memories(id, content, kind, project, topic_key, source, created_at, "
        "updated_at, deleted, content_hash, model_id, created_hlc, hlc, field_hlc, ancestors, "
        "rowid, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(*_row(s), first_rowid + i, first_seq + i) for i, s in enumerate(states)],
    )
    conn.execute(
        "INSERT INTO memories_fts(rowid, content) SELECT rowid, content FROM memories "
        "WHERE rowid >= ? AND deleted = 0",
        (first_rowid,),
    )
    conn.executemany(
        "INSERT INTO memory_tags(memory_rowid, tag) VALUES (?, ?)",
        [(first_rowid + i, tag) for i, s in enumerate(states) for tag in s.memory.tags],
    )
    conn.executemany(
        "INSERT INTO memory_vectors(memory_rowid, model_id, vector) VALUES (?, ?, ?)",
        [
            (first_rowid + i, s.memory.model_id, s.vector)
            for i, s in enumerate(states)
            if s.vector is not None and s.memory.model_id
        ],
    )
    for state in states:
        if state.revisions:
            _write_revisions(conn, state.memory.id, state.revisions)


def update_state(conn: sqlite3.Connection, rowid: int, state: MemoryState) -> None:
    """Overwrite a memory with its merged state (a new seq, so indexes catch up)."""
    seq = next_seq(conn)
    conn.execute(
        "UPDATE memories SET id = ?, content = ?, kind = ?, project = ?, topic_key = ?, "
        "source = ?, created_at = ?, updated_at = ?, deleted = ?, content_hash = ?, "
        "model_id = ?, created_hlc = ?, hlc = ?, field_hlc = ?, ancestors = ?, seq = ? "
        "WHERE rowid = ?",
        (*_row(state), seq, rowid),
    )
    conn.execute("DELETE FROM memory_tags WHERE memory_rowid = ?", (rowid,))
    conn.executemany(
        "INSERT INTO memory_tags(memory_rowid, tag) VALUES (?, ?)",
        [(rowid, tag) for tag in state.memory.tags],
    )
    if state.vector is not None and state.memory.model_id:
        conn.execute(
            "INSERT OR REPLACE INTO memory_vectors(memory_rowid, model_id, vector) "
            "VALUES (?, ?, ?)",
            (rowid, state.memory.model_id, state.vector),
        )
    else:
        conn.execute("DELETE FROM memory_vectors WHERE memory_rowid = ?", (rowid,))
    _write_revisions(conn, state.memory.id, state.revisions)


def put_relation(conn: sqlite3.Connection, state: RelationState) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO relations(from_id, to_id, type, created_at, hlc, deleted) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (state.from_id, state.to_id, state.type, state.created_at, state.hlc, int(state.deleted)),
    )


# --- conflicts ----------------------------------------------------------------------------------


def _revisions_of(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, list[Revision]]:
    found: dict[str, list[Revision]] = {}
    sql = "SELECT memory_id, hlc, content, content_hash FROM conflicts WHERE memory_id IN ({marks})"
    for memory_id, hlc, content, digest in rows_in(conn, sql, ids):
        found.setdefault(memory_id, []).append(Revision(hlc, content, digest))
    return found


def _write_revisions(
    conn: sqlite3.Connection, memory_id: str, revisions: Sequence[Revision]
) -> None:
    conn.execute("DELETE FROM conflicts WHERE memory_id = ?", (memory_id,))
    conn.executemany(
        "INSERT INTO conflicts(memory_id, hlc, content, content_hash) VALUES (?, ?, ?, ?)",
        [(memory_id, r.hlc, r.content, r.content_hash) for r in revisions],
    )


def conflicts(conn: sqlite3.Connection) -> list[Conflict]:
    """Open conflicts (a kept version whose content differs from the current one), oldest first."""
    # CROSS JOIN keeps the (few) conflicts as the outer loop: with a plain JOIN SQLite scanned
    # every memory and probed the conflicts for each (63 ms at 10k memories, for none).
    rows = conn.execute(
        "SELECT c.memory_id, c.hlc, c.content, m.content, "
        "coalesce(json_extract(m.field_hlc, '$.content'), m.created_hlc) FROM conflicts c "
        "CROSS JOIN memories m ON m.id = c.memory_id WHERE m.deleted = 0 "
        "AND c.content_hash != m.content_hash ORDER BY c.hlc"
    ).fetchall()
    out = []
    for memory_id, hlc, content, current, current_hlc in rows:
        clock = HLC.unpack(hlc)
        out.append(
            Conflict(
                conflict_id(memory_id, hlc),
                memory_id,
                hlc,
                content,
                current,
                clock.device_id,
                clock.wall_ms,
                HLC.unpack(current_hlc).device_id,
            )
        )
    return out


def conflict_id(memory_id: str, hlc: str) -> str:
    """A short stable id for a conflict: the memory's id and the losing version's clock."""
    return f"{memory_id[:8]}-{hashlib.sha256(hlc.encode()).hexdigest()[:8]}"


# --- sync metadata ---------------------------------------------------------------


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: str | None) -> None:
    if value is None:
        conn.execute("DELETE FROM meta WHERE key = ?", (key,))
    else:
        conn.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


def without_vector(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """(id, content, content_hash) of the live memories that have no vector."""
    return [
        (r[0], r[1], r[2])
        for r in conn.execute(
            "SELECT m.id, m.content, m.content_hash FROM memories m WHERE m.deleted = 0 AND "
            "NOT EXISTS (SELECT 1 FROM memory_vectors v WHERE v.memory_rowid = m.rowid) "
            "ORDER BY m.rowid"
        )
    ]


def set_vector(
    conn: sqlite3.Connection, memory_id: str, content_hash: str, model_id: str, vector: bytes
) -> None:
    """Store a vector made here for a pulled memory, if its content is still the embedded one."""
    row = conn.execute(
        "SELECT rowid FROM memories WHERE id = ? AND content_hash = ? AND deleted = 0",
        (memory_id, content_hash),
    ).fetchone()
    if row is None:
        return
    seq = next_seq(conn)
    conn.execute(
        "INSERT OR REPLACE INTO memory_vectors(memory_rowid, model_id, vector) VALUES (?, ?, ?)",
        (row[0], model_id, vector),
    )
    conn.execute(
        "UPDATE memories SET model_id = ?, seq = ? WHERE rowid = ?", (model_id, seq, row[0])
    )
