"""The outbox: mutations written in the same transaction as the change they describe.

Sync (a later layer) sends them and deletes each only after the remote acknowledged it. A memory
mutation that carries content travels with that content's vector; the vector is not copied into
the outbox but joined from ``memory_vectors`` while the memory's content hash still matches.
"""

from __future__ import annotations

import json
import sqlite3

from cairn.model import Mutation
from cairn.store.clock import now_ms


def append(conn: sqlite3.Connection, mutation: Mutation) -> None:
    conn.execute(
        "INSERT INTO outbox(mutation_id, device_id, hlc, entity, entity_id, op, fields, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            mutation.mutation_id,
            mutation.device_id,
            mutation.hlc,
            mutation.entity,
            mutation.entity_id,
            mutation.op,
            json.dumps(mutation.fields, sort_keys=True, separators=(",", ":")),
            now_ms(),
        ),
    )


def pending(conn: sqlite3.Connection, limit: int = 1000) -> list[Mutation]:
    rows = conn.execute(
        "SELECT o.mutation_id, o.device_id, o.hlc, o.entity, o.entity_id, o.op, o.fields, "
        "v.vector, v.model_id FROM outbox o "
        "LEFT JOIN memories m ON o.entity = 'memory' AND m.id = o.entity_id "
        "AND m.content_hash = json_extract(o.fields, '$.content_hash') "
        "LEFT JOIN memory_vectors v ON v.memory_rowid = m.rowid "
        "ORDER BY o.seq LIMIT ?",
        (limit,),
    ).fetchall()
    return [
        Mutation(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), r[7], r[8]) for r in rows
    ]


def count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
