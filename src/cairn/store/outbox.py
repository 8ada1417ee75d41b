"""The outbox: which entities changed locally and are not yet acknowledged by the remote.

Each local change appends an entry in the same transaction as the change. A push sends each
changed entity's whole current state once, under the id of its newest entry, and removes the
entries up to that one only after the remote acknowledged it. What the remote refuses moves to
the dead-letter list with its reason; it never blocks the entries behind it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cairn.ids import uuid7
from cairn.replication import Mutation
from cairn.store.clock import now_ms


@dataclass(frozen=True)
class Pending:
    """The newest outbox entry of one entity; acknowledging it clears the older ones too."""

    seq: int
    mutation: Mutation


@dataclass(frozen=True)
class DeadLetter:
    mutation_id: str
    direction: str
    entity: str
    entity_id: str
    code: str
    message: str
    failed_at: int


def append(conn: sqlite3.Connection, mutation: Mutation) -> None:
    append_many(conn, [mutation])


def append_many(conn: sqlite3.Connection, entries: Iterable[Mutation]) -> None:
    """Append entries in order, by one statement."""
    now = now_ms()
    conn.executemany(
        "INSERT INTO outbox(mutation_id, device_id, hlc, entity, entity_id, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(m.mutation_id, m.device_id, m.hlc, m.entity, m.entity_id, now) for m in entries],
    )


def pending(conn: sqlite3.Connection, limit: int = 1000, after_seq: int = 0) -> list[Pending]:
    """Changed entities, oldest newest-change first: one entry per entity."""
    rows = conn.execute(
        "SELECT o.seq, o.mutation_id, o.device_id, o.hlc, o.entity, o.entity_id FROM outbox o "
        "WHERE o.seq > ? AND o.seq = (SELECT max(seq) FROM outbox p WHERE p.entity_id = "
        "o.entity_id) ORDER BY o.seq LIMIT ?",
        (after_seq, limit),
    ).fetchall()
    return [Pending(r[0], Mutation(r[1], r[2], r[3], r[4], r[5])) for r in rows]


def acknowledge(conn: sqlite3.Connection, done: Iterable[Pending]) -> None:
    """Drop each entity's entries up to the acknowledged one (later changes stay queued)."""
    conn.executemany(
        "DELETE FROM outbox WHERE entity_id = ? AND seq <= ?",
        [(p.mutation.entity_id, p.seq) for p in done],
    )


def latest(conn: sqlite3.Connection) -> int | None:
    """The newest entry's seq (None: nothing pending); a cheap probe for new local changes."""
    row = conn.execute("SELECT max(seq) FROM outbox").fetchone()
    return None if row[0] is None else int(row[0])


def count(conn: sqlite3.Connection) -> int:
    """How many entities wait to be pushed."""
    return int(conn.execute("SELECT count(DISTINCT entity_id) FROM outbox").fetchone()[0])


def enqueue_all(conn: sqlite3.Connection, device_id: str, hlc: str) -> int:
    """Queue every memory and relation again (after the sync rules or the remote changed)."""
    entities = [("memory", r[0]) for r in conn.execute("SELECT id FROM memories")]
    entities += [
        ("relation", f"{r[0]}|{r[2]}|{r[1]}")
        for r in conn.execute("SELECT from_id, to_id, type FROM relations")
    ]
    append_many(
        conn, [Mutation(uuid7(), device_id, hlc, e, entity_id) for e, entity_id in entities]
    )
    return len(entities)


def dead_letter(
    conn: sqlite3.Connection, direction: str, entries: Sequence[Mutation], code: str, message: str
) -> None:
    """Set mutations aside with the reason (pushes: their outbox entries leave the queue)."""
    conn.executemany(
        "INSERT OR REPLACE INTO dead_letters(mutation_id, direction, entity, entity_id, code, "
        "message, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (m.mutation_id, direction, m.entity, m.entity_id, code, message, now_ms())
            for m in entries
        ],
    )
    if direction == "push":
        conn.executemany(
            "DELETE FROM outbox WHERE entity_id = ? AND seq <= "
            "(SELECT seq FROM outbox WHERE mutation_id = ?)",
            [(m.entity_id, m.mutation_id) for m in entries],
        )


def restore_dead_letters(conn: sqlite3.Connection, letters: Sequence[DeadLetter]) -> None:
    """Put dead letters back as they were (a repaired store keeps its list)."""
    conn.executemany(
        "INSERT OR REPLACE INTO dead_letters(mutation_id, direction, entity, entity_id, code, "
        "message, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (d.mutation_id, d.direction, d.entity, d.entity_id, d.code, d.message, d.failed_at)
            for d in letters
        ],
    )


def dead_letters(conn: sqlite3.Connection) -> list[DeadLetter]:
    return [
        DeadLetter(*r)
        for r in conn.execute(
            "SELECT mutation_id, direction, entity, entity_id, code, message, failed_at "
            "FROM dead_letters ORDER BY failed_at"
        )
    ]


def requeue_dead_letters(conn: sqlite3.Connection, device_id: str, hlc: str) -> int:
    """Queue the entities of refused pushes again, under new mutation ids; clears the list."""
    rows = conn.execute(
        "SELECT DISTINCT entity, entity_id FROM dead_letters WHERE direction = 'push'"
    ).fetchall()
    append_many(conn, [Mutation(uuid7(), device_id, hlc, r[0], r[1]) for r in rows])
    conn.execute("DELETE FROM dead_letters")
    return len(rows)
