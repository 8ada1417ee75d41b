"""Reading what a damaged store file still holds: its memories, relations and dead letters.

SQLite raises on a damaged page and the rows on it are lost, but the rest of a b-tree can still
be reached by seeking past the damage (``cairn.store.table_walk``). ``read`` walks every table;
the store's indexes are walked as well, to learn which rows existed (the ``lost`` counts) and,
where an index holds the whole row (tags), to recover it.

The outbox and the keyword index are not read: both are rebuilt from the recovered rows.
Nothing here writes: the file is opened read-only (``cairn.repair`` writes the new store).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cairn.hlc import HLC
from cairn.model import Memory
from cairn.replication import MemoryState, RelationState, Revision
from cairn.store.outbox import DeadLetter
from cairn.store.table_walk import read_one, walk


@dataclass
class Salvaged:
    """What could be read out of a damaged store."""

    memories: list[MemoryState] = field(default_factory=list)
    relations: list[RelationState] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    """Per table: rows an index shows existed that could not be read (or were garbage)."""


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection: nothing of the damaged file (or its WAL) is changed."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)


def check(path: Path, limit: int = 20) -> list[str]:
    """What SQLite's ``quick_check`` finds wrong with the store at ``path`` (empty: nothing)."""
    conn = connect_read_only(path)
    try:
        rows = conn.execute(f"PRAGMA quick_check({int(limit)})").fetchall()
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    finally:
        conn.close()
    lines = [
        line
        for row in rows
        for line in str(row[0]).splitlines()
        if line.strip() and not line.startswith("*** in database")
    ]
    return [] if lines == ["ok"] else lines[:limit]


def schema_version(path: Path) -> int | None:
    """The file's ``user_version`` (None: not even the header can be read)."""
    conn = connect_read_only(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.DatabaseError:
        return None
    finally:
        conn.close()


def read(path: Path) -> Salvaged:
    """Every row of ``path`` that can still be read, as replicated states."""
    conn = connect_read_only(path)
    try:
        return _read(conn)
    finally:
        conn.close()


def _read(conn: sqlite3.Connection) -> Salvaged:
    found = Salvaged()
    found.meta = {
        k: v
        for k, v in walk(conn, "SELECT key, value FROM meta", ("key",))
        if isinstance(k, str) and isinstance(v, str)
    }
    found.memories, found.lost["memories"] = _memories(conn)
    found.relations, found.lost["relations"] = _relations(conn)
    found.dead_letters, found.lost["dead_letters"] = _dead_letters(conn)
    return found


def _memories(conn: sqlite3.Connection) -> tuple[list[MemoryState], int]:
    """The memories that read as valid rows (with their tags, vectors and conflict versions),
    and how many rows the indexes show existed but do not."""
    tags = _tags(conn)
    vectors = {
        rowid: (model_id, vector)
        for rowid, model_id, vector in walk(
            conn, "SELECT rowid, model_id, vector FROM memory_vectors", ("rowid",)
        )
    }
    revisions = _revisions(conn)
    columns = (
        "SELECT rowid, id, content, kind, project, topic_key, source, created_at, updated_at, "
        "deleted, content_hash, model_id, hlc, created_hlc, field_hlc, ancestors FROM memories"
    )
    rows = {row[0]: row for row in walk(conn, columns, ("rowid",))}
    known = {
        r[1]
        for r in walk(
            conn, "SELECT id, rowid FROM memories INDEXED BY sqlite_autoindex_memories_1", ("id",)
        )
    }
    known |= {
        r[1]
        for r in walk(conn, "SELECT seq, rowid FROM memories INDEXED BY memories_seq", ("seq",))
    }
    for rowid in sorted(known - rows.keys()):  # rows the walk skipped over while probing
        row = read_one(conn, f"{columns} WHERE rowid = ?", rowid)
        if row is not None:
            rows[rowid] = row
    unreadable = len(known - rows.keys())
    by_id: dict[str, MemoryState] = {}
    for rowid, row in rows.items():
        state = _memory_state(row, tags.get(rowid, ()), vectors.get(rowid), revisions)
        if state is None:
            unreadable += 1
        elif state.memory.id not in by_id or by_id[state.memory.id].hlc < state.hlc:
            by_id[state.memory.id] = state
    return list(by_id.values()), unreadable


def _relations(conn: sqlite3.Connection) -> tuple[list[RelationState], int]:
    keys = ("from_id", "to_id", "type")
    relations = [
        relation
        for row in walk(
            conn, "SELECT from_id, to_id, type, created_at, hlc, deleted FROM relations", keys
        )
        if (relation := _relation_state(row)) is not None
    ]
    existed = {
        (r[2], r[0], r[1])
        for r in walk(
            conn,
            "SELECT to_id, type, from_id FROM relations INDEXED BY relations_to",
            ("to_id", "type", "from_id"),
        )
    }
    recovered = {(r.from_id, r.to_id, r.type) for r in relations}
    for key in sorted(existed - recovered):  # rows the walk skipped over while probing
        row = read_one(
            conn,
            "SELECT from_id, to_id, type, created_at, hlc, deleted FROM relations "
            "WHERE from_id = ? AND to_id = ? AND type = ?",
            *key,
        )
        if row is not None and (relation := _relation_state(row)) is not None:
            relations.append(relation)
    return relations, len(existed - {(r.from_id, r.to_id, r.type) for r in relations})


def _dead_letters(conn: sqlite3.Connection) -> tuple[list[DeadLetter], int]:
    letters = list(
        walk(
            conn,
            "SELECT rowid, mutation_id, direction, entity, entity_id, code, message, failed_at "
            "FROM dead_letters",
            ("rowid",),
        )
    )
    readable = [
        DeadLetter(*row[1:])
        for row in letters
        if all(isinstance(v, str) for v in row[1:7]) and isinstance(row[7], int)
    ]
    ids = {
        r[0]
        for r in walk(
            conn,
            "SELECT mutation_id FROM dead_letters INDEXED BY sqlite_autoindex_dead_letters_1",
            ("mutation_id",),
        )
    }
    return readable, len(ids - {d.mutation_id for d in readable})


def _tags(conn: sqlite3.Connection) -> dict[int, set[str]]:
    """Tags by memory rowid, from the table and from its index (which holds whole rows too)."""
    tags: dict[int, set[str]] = {}
    pairs = walk(conn, "SELECT memory_rowid, tag FROM memory_tags", ("memory_rowid", "tag"))
    for rowid, tag in pairs:
        if isinstance(rowid, int) and isinstance(tag, str):
            tags.setdefault(rowid, set()).add(tag)
    index = "SELECT tag, memory_rowid FROM memory_tags INDEXED BY memory_tags_tag"
    for tag, rowid in walk(conn, index, ("tag", "memory_rowid")):
        if isinstance(rowid, int) and isinstance(tag, str):
            tags.setdefault(rowid, set()).add(tag)
    return tags


def _revisions(conn: sqlite3.Connection) -> dict[str, list[Revision]]:
    found: dict[str, list[Revision]] = {}
    sql = "SELECT memory_id, hlc, content, content_hash FROM conflicts"
    for memory_id, hlc, content, digest in walk(conn, sql, ("memory_id", "hlc")):
        if all(isinstance(v, str) for v in (memory_id, hlc, content, digest)):
            found.setdefault(memory_id, []).append(Revision(hlc, content, digest))
    return found


def _memory_state(
    row: Sequence[Any],
    tags: set[str] | tuple[()],
    vector: tuple[Any, Any] | None,
    revisions: dict[str, list[Revision]],
) -> MemoryState | None:
    """The state a memory row describes, or None when the row is not a valid one."""
    (_rowid, memory_id, content, kind, project, topic_key, source, created, updated) = row[:9]
    (deleted, digest, model_id, hlc, created_hlc, field_hlc, ancestors) = row[9:]
    texts = (memory_id, content, kind, project, source, digest, hlc, created_hlc)
    try:
        if not all(isinstance(v, str) for v in texts) or not isinstance(created, int):
            return None
        if not isinstance(updated, int) or deleted not in (0, 1):
            return None
        if topic_key is not None and not isinstance(topic_key, str):
            return None
        for clock in (hlc, created_hlc):
            HLC.unpack(clock)
        clocks = json.loads(field_hlc)
        versions = json.loads(ancestors)
        if not isinstance(clocks, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in clocks.items()
        ):
            return None
        if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
            return None
    except (TypeError, ValueError):
        return None
    blob = None
    if vector is not None and vector[0] == model_id and isinstance(vector[1], bytes):
        blob = vector[1] if vector[1] and len(vector[1]) % 4 == 0 else None
    memory = Memory(
        id=memory_id,
        content=content,
        kind=kind,
        project=project,
        tags=tuple(sorted(tags)),
        topic_key=topic_key,
        source=source,
        created_at=created,
        updated_at=updated,
        deleted=bool(deleted),
        content_hash=digest,
        model_id=model_id if isinstance(model_id, str) and blob is not None else None,
        hlc=hlc,
    )
    return MemoryState(
        memory, created_hlc, clocks, tuple(versions), blob, tuple(revisions.get(memory_id, ()))
    )


def _relation_state(row: Sequence[Any]) -> RelationState | None:
    from_id, to_id, type_, created, hlc, deleted = row
    if not all(isinstance(v, str) for v in (from_id, to_id, type_, hlc)):
        return None
    if not isinstance(created, int) or deleted not in (0, 1):
        return None
    try:
        HLC.unpack(hlc)
    except ValueError:
        return None
    return RelationState(from_id, to_id, type_, created, bool(deleted), hlc)
