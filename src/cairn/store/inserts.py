"""New memory rows, written a run at a time (one statement per table for the whole run).

Must run inside ``Database.write()``, like every write of the store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from cairn import vector_bytes
from cairn.ids import uuid7
from cairn.model import Memory
from cairn.replication import Mutation
from cairn.store import outbox
from cairn.store.clock import device_id, next_hlcs


def insert_many(
    conn: sqlite3.Connection,
    made: Sequence[Memory],
    vectors: Sequence[npt.NDArray[np.float32] | None],
) -> list[Memory]:
    """Write new memories (their ids must be new) in order; returns them stamped with their
    changes' HLCs. Each gets the clock, seq, rowid and outbox entry that writing them one
    after the other would give it."""
    if not made:
        return []
    clocks = [hlc.pack() for hlc in next_hlcs(conn, len(made))]
    # Two subqueries: one query with both max() would scan the table (no index answers both).
    last_rowid, last_seq = conn.execute(
        "SELECT coalesce((SELECT max(rowid) FROM memories), 0), "
        "coalesce((SELECT max(seq) FROM memories), 0)"
    ).fetchone()
    # The rowids SQLite would choose itself (one past the largest), named so that the keyword
    # entries, tags and vectors can point at them without reading them back.
    rowids = range(last_rowid + 1, last_rowid + 1 + len(made))
    rows = list(zip(rowids, made, vectors, clocks, strict=True))
    conn.executemany(
        "INSERT INTO memories(rowid, id, content, kind, project, topic_key, source, created_at, "
        "updated_at, deleted, content_hash, model_id, created_hlc, hlc, seq) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?)",
        [
            (
                rowid,
                m.id,
                m.content,
                m.kind,
                m.project,
                m.topic_key,
                m.source,
                m.created_at,
                m.updated_at,
                m.content_hash,
                m.model_id if vector is not None else None,
                packed,
                packed,
                last_seq + n,
            )
            for n, (rowid, m, vector, packed) in enumerate(rows, 1)
        ],
    )
    conn.executemany(
        "INSERT INTO memories_fts(rowid, content) VALUES (?, ?)",
        [(rowid, m.content) for rowid, m, _v, _p in rows],
    )
    conn.executemany(
        "INSERT INTO memory_tags(memory_rowid, tag) VALUES (?, ?)",
        [(rowid, tag) for rowid, m, _v, _p in rows for tag in m.tags],
    )
    conn.executemany(
        "INSERT INTO memory_vectors(memory_rowid, model_id, vector) VALUES (?, ?, ?)",
        [
            (rowid, m.model_id, vector_bytes.stored(vector))
            for rowid, m, vector, _p in rows
            if vector is not None and m.model_id
        ],
    )
    device = device_id(conn)
    outbox.append_many(
        conn, [Mutation(uuid7(), device, packed, "memory", m.id) for _r, m, _v, packed in rows]
    )
    return [replace(m, hlc=packed, deleted=False) for _r, m, _v, packed in rows]
