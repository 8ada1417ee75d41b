"""Memory rows, their tags and vectors: reads, and writes that log a mutation in the outbox.

Every write function must run inside ``Database.write()``: the row, its FTS entry,
its vector and its outbox mutation then commit together or not at all.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from cairn import memory_rules, vector_bytes
from cairn.hlc import HLC
from cairn.ids import uuid7
from cairn.memory_rules import NewMemory, merged_tags
from cairn.model import Memory, content_hash
from cairn.replication import Mutation
from cairn.store import outbox
from cairn.store.clock import device_id, next_hlc, now_ms

COLUMNS = (
    "m.rowid, m.id, m.content, m.kind, m.project, m.topic_key, m.source, m.created_at, "
    "m.updated_at, m.deleted, m.content_hash, m.model_id, m.hlc"
)


def next_seq(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM memories").fetchone()[0])


def record_change(
    conn: sqlite3.Connection, hlc: HLC, entity_id: str, entity: str = "memory"
) -> None:
    outbox.append(conn, Mutation(uuid7(), device_id(conn), hlc.pack(), entity, entity_id))


def add_tags(conn: sqlite3.Connection, memory: Memory, tags: Iterable[str]) -> Memory:
    """Add tags to a live memory (no-op, no mutation, when it has them all already)."""
    merged = merged_tags(memory.tags, tags)
    if merged is None:
        return memory
    hlc = next_hlc(conn)
    packed, updated = hlc.pack(), now_ms()
    rowid = _rowid(conn, memory.id)
    conn.executemany(
        "INSERT OR IGNORE INTO memory_tags(memory_rowid, tag) VALUES (?, ?)",
        [(rowid, tag) for tag in merged],
    )
    _stamp(conn, rowid, packed, updated, ())
    record_change(conn, hlc, memory.id)
    return replace(memory, tags=merged, hlc=packed, updated_at=updated)


def tombstone(conn: sqlite3.Connection, memory: Memory) -> Memory:
    """Forget a memory: keep a tombstone (id, clock) but erase its content, tags, vector and
    any conflicting versions of its content."""
    hlc = next_hlc(conn)
    packed, updated = hlc.pack(), now_ms()
    rowid = _rowid(conn, memory.id)
    conn.execute("DELETE FROM memory_tags WHERE memory_rowid = ?", (rowid,))
    conn.execute("DELETE FROM memory_vectors WHERE memory_rowid = ?", (rowid,))
    conn.execute("DELETE FROM conflicts WHERE memory_id = ?", (memory.id,))
    conn.execute(
        "UPDATE memories SET deleted = 1, content = '', content_hash = '', model_id = NULL "
        "WHERE rowid = ?",
        (rowid,),
    )
    _stamp(conn, rowid, packed, updated, ("deleted",))
    record_change(conn, hlc, memory.id)
    return replace(
        memory,
        content="",
        content_hash="",
        tags=(),
        deleted=True,
        model_id=None,
        hlc=packed,
        updated_at=updated,
    )


def edit(
    conn: sqlite3.Connection,
    memory: Memory,
    content: str | None = None,
    vector: npt.NDArray[np.float32] | None = None,
    kind: str | None = None,
    settles: Sequence[str] = (),
) -> Memory:
    """Change a live memory's content (with its new vector) and/or kind.

    The new content version lists the current one, and every conflict version in ``settles``,
    as its ancestors: on every replica those stop being conflicts.
    """
    hlc = next_hlc(conn)
    packed, updated = hlc.pack(), now_ms()
    row = conn.execute(
        "SELECT rowid, created_hlc, field_hlc, ancestors FROM memories WHERE id = ?",
        (memory.id,),
    ).fetchone()
    rowid, clocks = row[0], json.loads(row[2])
    stamped: list[str] = []
    if kind is not None and kind != memory.kind:
        conn.execute("UPDATE memories SET kind = ? WHERE rowid = ?", (kind, rowid))
        stamped.append("kind")
    if content is not None:
        ancestors = sorted({*json.loads(row[3]), clocks.get("content", row[1]), *settles})
        conn.execute(
            "UPDATE memories SET content = ?, content_hash = ?, model_id = ?, ancestors = ? "
            "WHERE rowid = ?",
            (content, content_hash(content), memory.model_id, json.dumps(ancestors), rowid),
        )
        conn.executemany(
            "DELETE FROM conflicts WHERE memory_id = ? AND hlc = ?",
            [(memory.id, hlc) for hlc in ancestors],
        )
        if vector is not None and memory.model_id:
            conn.execute(
                "INSERT OR REPLACE INTO memory_vectors(memory_rowid, model_id, vector) "
                "VALUES (?, ?, ?)",
                (rowid, memory.model_id, vector_bytes.stored(vector)),
            )
        stamped.append("content")
    if not stamped:
        return memory
    _stamp(conn, rowid, packed, updated, stamped)
    record_change(conn, hlc, memory.id)
    found = get(conn, memory.id)
    assert found is not None
    return found


def set_project(conn: sqlite3.Connection, memory: Memory, project: str) -> Memory:
    """Move a memory to another project: a change of its ``project`` field that syncs."""
    hlc = next_hlc(conn)
    packed, updated = hlc.pack(), now_ms()
    rowid = _rowid(conn, memory.id)
    conn.execute("UPDATE memories SET project = ? WHERE rowid = ?", (project, rowid))
    _stamp(conn, rowid, packed, updated, ("project",))
    record_change(conn, hlc, memory.id)
    return replace(memory, project=project, hlc=packed, updated_at=updated)


def _stamp(
    conn: sqlite3.Connection, rowid: int, packed: str, updated: int, fields: Sequence[str]
) -> None:
    row = conn.execute("SELECT field_hlc FROM memories WHERE rowid = ?", (rowid,)).fetchone()
    clocks = json.loads(row[0])
    clocks.update(dict.fromkeys(fields, packed))
    conn.execute(
        "UPDATE memories SET hlc = ?, updated_at = ?, field_hlc = ?, seq = ? WHERE rowid = ?",
        (packed, updated, json.dumps(clocks, sort_keys=True), next_seq(conn), rowid),
    )


def _rowid(conn: sqlite3.Connection, memory_id: str) -> int:
    return int(conn.execute("SELECT rowid FROM memories WHERE id = ?", (memory_id,)).fetchone()[0])


# --- reads ------------------------------------------------------------------------------------


def rows_in(conn: sqlite3.Connection, sql: str, values: Sequence[Any]) -> Iterator[Any]:
    """Rows of ``sql``, whose ``{marks}`` is filled with one ``?`` per value, 500 at a time."""
    for start in range(0, len(values), 500):
        chunk = list(values[start : start + 500])
        yield from conn.execute(sql.format(marks=",".join("?" * len(chunk))), chunk)


def tags_for(conn: sqlite3.Connection, rowids: Sequence[int]) -> dict[int, list[str]]:
    tags: dict[int, list[str]] = {}
    sql = "SELECT memory_rowid, tag FROM memory_tags WHERE memory_rowid IN ({marks})"
    for rowid, tag in rows_in(conn, sql, rowids):
        tags.setdefault(rowid, []).append(tag)
    return tags


def build_memories(rows: list[Any], tags: dict[int, list[str]]) -> list[Memory]:
    return [
        Memory(
            id=r[1],
            content=r[2],
            kind=r[3],
            project=r[4],
            tags=tuple(sorted(tags.get(r[0], ()))),
            topic_key=r[5],
            source=r[6],
            created_at=r[7],
            updated_at=r[8],
            deleted=bool(r[9]),
            content_hash=r[10],
            model_id=r[11],
            hlc=r[12],
        )
        for r in rows
    ]


def fetch(conn: sqlite3.Connection, where: str, params: Sequence[Any]) -> list[Memory]:
    """The memories of the rows that ``where`` selects (``m`` is the memories table)."""
    rows = conn.execute(f"SELECT {COLUMNS} FROM memories m WHERE {where}", params).fetchall()
    return build_memories(rows, tags_for(conn, [r[0] for r in rows]))


def get(conn: sqlite3.Connection, memory_id: str) -> Memory | None:
    found = fetch(conn, "m.id = ?", (memory_id,))
    return found[0] if found else None


def resolve(conn: sqlite3.Connection, memory_id: str, allow_deleted: bool = False) -> Memory:
    """A memory by id or by a unique id prefix (``memory_rules.resolve``)."""
    return memory_rules.resolve(
        memory_id, lambda i: get(conn, i), lambda p: ids_with_prefix(conn, p), allow_deleted
    )


def ids_with_prefix(conn: sqlite3.Connection, prefix: str, limit: int = 2) -> list[str]:
    rows = conn.execute(
        "SELECT id FROM memories WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
        (prefix, prefix + "\uffff", limit),
    ).fetchall()
    return [r[0] for r in rows]


def by_rowids(conn: sqlite3.Connection, rowids: Sequence[int]) -> dict[int, Memory]:
    rows = list(
        rows_in(conn, f"SELECT {COLUMNS} FROM memories m WHERE m.rowid IN ({{marks}})", rowids)
    )
    built = build_memories(rows, tags_for(conn, [r[0] for r in rows]))
    return {row[0]: memory for row, memory in zip(rows, built, strict=True)}


def live_by_hash(conn: sqlite3.Connection, project: str, content_hash: str) -> Memory | None:
    """The oldest live memory of ``project`` with this content, if any."""
    return live_by_hashes(conn, {(project, content_hash)}).get((project, content_hash))


def live_by_hashes(
    conn: sqlite3.Connection, keys: Collection[tuple[str, str]]
) -> dict[tuple[str, str], Memory]:
    """For each (project, content hash) of ``keys`` that a live memory has: the oldest such."""
    sql = f"SELECT {COLUMNS} FROM memories m WHERE m.content_hash IN ({{marks}}) "
    sql += "AND m.deleted = 0 ORDER BY m.created_at"
    wanted = set(keys)
    rows = [
        r for r in rows_in(conn, sql, sorted({h for _p, h in wanted})) if (r[4], r[10]) in wanted
    ]
    found: dict[tuple[str, str], Memory] = {}
    for memory in build_memories(rows, tags_for(conn, [r[0] for r in rows])):
        found.setdefault((memory.project, memory.content_hash), memory)
    return found


def topic_newest(conn: sqlite3.Connection, item: NewMemory) -> Memory | None:
    """The newest-created memory (forgotten ones too) of a new memory's topic, if it has one."""
    if not item.topic_key:
        return None
    found = fetch(
        conn,
        "m.project = ? AND m.topic_key = ? ORDER BY m.created_at DESC, m.id DESC LIMIT 1",
        (item.project, item.topic_key),
    )
    return found[0] if found else None


def live_in_project(conn: sqlite3.Connection, project: str) -> list[Memory]:
    """Every live memory of a project, oldest first."""
    return fetch(conn, "m.project = ? AND m.deleted = 0 ORDER BY m.created_at, m.id", (project,))


def live_with_hash(conn: sqlite3.Connection, project: str, content_hash: str) -> list[Memory]:
    """Every live memory of a project with this content, smallest id first."""
    return fetch(
        conn,
        "m.content_hash = ? AND m.project = ? AND m.deleted = 0 ORDER BY m.id",
        (content_hash, project),
    )


def shared_hashes(conn: sqlite3.Connection, hashes: Sequence[str]) -> set[tuple[str, str]]:
    """(project, content_hash) pairs among ``hashes`` held by more than one live memory."""
    sql = (
        "SELECT project, content_hash FROM memories WHERE deleted = 0 AND content_hash IN "
        "({marks}) GROUP BY project, content_hash HAVING count(*) > 1"
    )
    return {(r[0], r[1]) for r in rows_in(conn, sql, hashes)}


def changes_since(
    conn: sqlite3.Connection, seq: int
) -> list[tuple[int, bool, str, str | None, bytes | None]]:
    """(rowid, deleted, project, model_id, vector) of rows changed after ``seq``, in seq order."""
    return [
        (int(r[0]), bool(r[1]), r[2], r[3], r[4])
        for r in conn.execute(
            "SELECT m.rowid, m.deleted, m.project, v.model_id, v.vector FROM memories m "
            "LEFT JOIN memory_vectors v ON v.memory_rowid = m.rowid WHERE m.seq > ? "
            "ORDER BY m.seq",
            (seq,),
        )
    ]


def count_vectors(conn: sqlite3.Connection, model_id: str) -> int:
    row = conn.execute("SELECT count(*) FROM memory_vectors WHERE model_id = ?", (model_id,))
    return int(row.fetchone()[0])


def vectors_of(conn: sqlite3.Connection, model_id: str, rowids: Sequence[int]) -> dict[int, bytes]:
    """rowid -> vector (of ``model_id``) of those of ``rowids`` that have one."""
    sql = "SELECT memory_rowid, model_id, vector FROM memory_vectors "
    sql += "WHERE memory_rowid IN ({marks})"
    return {int(r): v for r, m, v in rows_in(conn, sql, rowids) if m == model_id}


def vector_pages(
    conn: sqlite3.Connection, model_id: str, page: int = 4096
) -> Iterator[list[tuple[int, bytes, str]]]:
    """Every (rowid, vector, project) of one model, a page at a time (only live rows have one)."""
    cursor = conn.execute(
        "SELECT v.memory_rowid, v.vector, m.project FROM memory_vectors v "
        "JOIN memories m ON m.rowid = v.memory_rowid WHERE v.model_id = ?",
        (model_id,),
    )
    while rows := cursor.fetchmany(page):
        yield rows


def max_seq(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(seq), 0) FROM memories").fetchone()[0])


def with_topic(conn: sqlite3.Connection) -> list[Memory]:
    """Every memory with a topic_key (forgotten ones too: topic chains include them), oldest
    first."""
    return fetch(conn, "m.topic_key IS NOT NULL ORDER BY m.created_at, m.id", ())


def known_ids(conn: sqlite3.Connection, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` the store has, live or forgotten."""
    return {r[0] for r in rows_in(conn, "SELECT id FROM memories WHERE id IN ({marks})", ids)}
