"""Relations between memories (supersedes, relates_to, contradicts, duplicate_of) and topic chains.

Like every write in the store, each change also appends an outbox entry in the same transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from cairn.model import Memory
from cairn.store import memories
from cairn.store.clock import next_hlc, now_ms
from cairn.store.memories import record_change, rows_in


def add_relation(conn: sqlite3.Connection, from_id: str, to_id: str, type_: str) -> bool:
    """Relate two memories; False (and no mutation) when the relation exists already."""
    if has_relation(conn, from_id, to_id, type_):
        return False
    hlc = next_hlc(conn)
    conn.execute(
        "INSERT INTO relations(from_id, to_id, type, created_at, hlc) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT DO UPDATE SET deleted = 0, hlc = excluded.hlc",
        (from_id, to_id, type_, now_ms(), hlc.pack()),
    )
    record_change(conn, hlc, relation_key(from_id, type_, to_id), entity="relation")
    return True


def remove_relation(conn: sqlite3.Connection, from_id: str, to_id: str, type_: str) -> None:
    if not has_relation(conn, from_id, to_id, type_):
        return
    hlc = next_hlc(conn)
    conn.execute(
        "UPDATE relations SET deleted = 1, hlc = ? WHERE from_id = ? AND to_id = ? AND type = ?",
        (hlc.pack(), from_id, to_id, type_),
    )
    record_change(conn, hlc, relation_key(from_id, type_, to_id), entity="relation")


def relation_key(from_id: str, type_: str, to_id: str) -> str:
    return f"{from_id}|{type_}|{to_id}"


def link_topic(conn: sqlite3.Connection, memory: Memory) -> str | None:
    """Put a memory in its topic's chain, ordered by creation; returns the one it supersedes.

    Each memory of a (project, topic_key) supersedes the one created just before it. The chain
    depends only on which memories exist, never on the order they arrived in, so replicas that
    learn of them in different orders end with the same relations: a link that a newly placed
    memory now sits inside is removed.
    """
    if not memory.topic_key:
        return None
    key = (memory.project, memory.topic_key, memory.id, memory.created_at, memory.id)
    before = conn.execute(
        "SELECT id FROM memories WHERE project = ? AND topic_key = ? AND id != ? "
        "AND (created_at, id) < (?, ?) ORDER BY created_at DESC, id DESC LIMIT 1",
        key,
    ).fetchone()
    after = conn.execute(
        "SELECT id FROM memories WHERE project = ? AND topic_key = ? AND id != ? "
        "AND (created_at, id) > (?, ?) ORDER BY created_at, id LIMIT 1",
        key,
    ).fetchone()
    if before:
        add_relation(conn, memory.id, before[0], "supersedes")
    if after:
        add_relation(conn, after[0], memory.id, "supersedes")
    if before and after:
        remove_relation(conn, after[0], before[0], "supersedes")
    return str(before[0]) if before else None


def collapse(conn: sqlite3.Connection, project: str, content_hash: str) -> int:
    """Collapse live memories of a project with identical content onto the smallest id: the
    others become tombstones marked ``duplicate_of`` it, their tags merged in; returns how
    many. Every replica applies this rule the same way (``cairn.sync.apply``)."""
    same = memories.live_with_hash(conn, project, content_hash)
    if len(same) < 2:
        return 0
    keeper, *others = same
    for other in others:
        keeper = memories.add_tags(conn, keeper, other.tags)
        memories.tombstone(conn, other)
        add_relation(conn, other.id, keeper.id, "duplicate_of")
    return len(others)


def successors(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, str]:
    """For each id that a live memory supersedes: the newest such successor's id."""
    sql = (
        "SELECT r.to_id, r.from_id, r.created_at FROM relations r JOIN memories m "
        "ON m.id = r.from_id WHERE r.type = 'supersedes' AND r.deleted = 0 AND m.deleted = 0 "
        "AND r.to_id IN ({marks})"
    )
    rows = sorted(rows_in(conn, sql, ids), key=lambda r: r[2])
    return {to_id: from_id for to_id, from_id, _created in rows}


def relations_of(conn: sqlite3.Connection, memory_id: str) -> list[tuple[str, str, str, int]]:
    return [
        (r[0], r[1], r[2], r[3])
        for r in conn.execute(
            "SELECT from_id, to_id, type, created_at FROM relations "
            "WHERE (from_id = ? OR to_id = ?) AND deleted = 0 ORDER BY created_at",
            (memory_id, memory_id),
        )
    ]


def relations_among(conn: sqlite3.Connection) -> list[tuple[str, str, str, int]]:
    return [
        (r[0], r[1], r[2], r[3])
        for r in conn.execute(
            "SELECT from_id, to_id, type, created_at FROM relations WHERE deleted = 0 "
            "ORDER BY created_at"
        )
    ]


def has_relation(conn: sqlite3.Connection, from_id: str, to_id: str, type_: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM relations WHERE from_id = ? AND to_id = ? AND type = ? AND deleted = 0",
        (from_id, to_id, type_),
    ).fetchone()
    return row is not None


def relink_topics(conn: sqlite3.Connection) -> int:
    """Put every memory with a topic_key in its topic's chain again (the ``supersedes`` links
    are derived from the memories, so a lost one can be made again); returns how many links
    were added or removed."""
    before = _relation_changes(conn)
    for memory in memories.with_topic(conn):
        link_topic(conn, memory)
    return _relation_changes(conn) - before


def _relation_changes(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM outbox WHERE entity = 'relation'").fetchone()[0])
