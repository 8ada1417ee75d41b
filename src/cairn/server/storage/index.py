"""The core's hosted search index: the fold of a workspace's log and the lookups recall needs.

Which memories are nearest a vector, and which match words, each backend answers its own way
(``nearest``, ``keyword``); the rows, their filters and the fold's position are kept here once.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from cairn.errors import NotFound
from cairn.model import Filters, Memory, Relation
from cairn.replication import RelationState
from cairn.server.storage.dialect import Conn
from cairn.server.storage.hosted_vectors import HostedVectors, VectorRow
from cairn.server.storage.records import (
    MEMORY_COLUMNS,
    IndexedMemory,
    Ranked,
    memory_of,
    memory_values,
)
from cairn.server.storage.sql import SqlBase
from cairn.store.search_queries import filter_sql

_UPDATED = (
    "content", "kind", "project", "tags", "topic_key", "source", "created_at", "updated_at",
    "deleted", "content_hash", "model_id", "hlc", "payload",
)  # fmt: skip


def upsert_set(vector_column: str) -> str:
    """The SET of an index row's upsert: every field, the vector and the position."""
    return ", ".join(f"{c} = excluded.{c}" for c in (*_UPDATED, vector_column, "position"))


class HostedIndex(SqlBase):
    """A hosted workspace's memories and relations as folded from its log, and its position."""

    def __init__(self) -> None:
        super().__init__()
        self._vectors: dict[str, HostedVectors] = {}
        self._vectors_lock = threading.Lock()

    def index_position(self, workspace_id: str) -> int:
        with self._read(workspace_id) as conn:
            return self._position(conn, workspace_id)

    def index_lag(self, workspace_id: str) -> tuple[int, int]:
        with self._read(workspace_id) as conn:
            row = conn.execute(
                "SELECT (SELECT position FROM hosted_index WHERE workspace_id = w.id), "
                "latest_seq FROM workspaces w WHERE w.id = ?",
                (workspace_id,),
            ).fetchone()
        if row is None:
            raise NotFound(f"no workspace with id {workspace_id!r}")
        return int(row[0] or 0), int(row[1])

    def put_index(
        self,
        workspace_id: str,
        expected: int,
        position: int,
        memories: Sequence[IndexedMemory],
        relations: Sequence[RelationState],
    ) -> bool:
        # Not durable: the index is a projection of the (durable) log, and a crash that loses
        # this commit loses the position with it, so the next fold reads those pages again.
        with self._write(workspace_id, durable=False) as conn:
            # Moving the position first takes its row's lock: a second writer that read the
            # same position waits here, then sees it moved and writes nothing.
            if expected == 0:
                moved = conn.execute(  # a start from 0: a new generation (``_vectors_at``)
                    "INSERT INTO hosted_index (workspace_id, position, generation) "
                    "VALUES (?, ?, ?) ON CONFLICT (workspace_id) DO UPDATE SET "
                    "position = excluded.position, generation = excluded.generation "
                    "WHERE hosted_index.position = 0",
                    (workspace_id, position, secrets.token_hex(8)),
                ).rowcount
            else:
                moved = conn.execute(
                    "UPDATE hosted_index SET position = ? WHERE workspace_id = ? AND position = ?",
                    (position, workspace_id, expected),
                ).rowcount
            if not moved:  # nothing written: the transaction commits nothing
                return False
            ids = [m.memory.id for m in memories]
            self._count_terms(conn, workspace_id, ids, -1)
            self._put_memories(conn, workspace_id, memories, position)
            self._count_terms(conn, workspace_id, ids, 1)
            conn.executemany(
                "INSERT INTO hosted_relations (workspace_id, from_id, to_id, type, created_at, "
                "deleted, hlc) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (workspace_id, from_id, type, to_id) DO UPDATE SET "
                "created_at = excluded.created_at, deleted = excluded.deleted, hlc = excluded.hlc",
                [
                    (workspace_id, r.from_id, r.to_id, r.type, r.created_at, r.deleted, r.hlc)
                    for r in relations
                ],
            )
        return True

    def _put_memories(
        self, conn: Conn, workspace_id: str, memories: Sequence[IndexedMemory], position: int
    ) -> None:
        """Write these index rows (at most one per memory), each at ``position``."""
        dialect = self.dialect
        vector = dialect.vector_column
        conn.executemany(
            f"INSERT INTO hosted_memories (workspace_id, {MEMORY_COLUMNS}, payload, {vector}, "
            f"position) VALUES ({'?, ' * 15}{dialect.vector_marker}, ?) "
            f"ON CONFLICT (workspace_id, id) DO UPDATE SET {upsert_set(vector)}",
            [
                (
                    workspace_id,
                    *memory_values(m.memory, dialect.encode_strings(m.memory.tags)),
                    m.payload,
                    dialect.encode_vector(m.vector),
                    position,
                )
                for m in memories
            ],
        )

    def indexed_payloads(self, workspace_id: str, memory_ids: Sequence[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        with self._read(workspace_id) as conn:
            for chunk in self._chunks(memory_ids):
                clause, params = self._in("id", chunk)
                rows = conn.execute(
                    f"SELECT id, payload FROM hosted_memories WHERE workspace_id = ? AND {clause}",
                    (workspace_id, *params),
                )
                found.update((memory_id, bytes(payload)) for memory_id, payload in rows)
        return found

    def indexed_memories(self, workspace_id: str, memory_ids: Sequence[str]) -> dict[str, Memory]:
        with self._read(workspace_id) as conn:
            return self._memories_in(conn, workspace_id, memory_ids)

    def recalled(
        self, workspace_id: str, memory_ids: Sequence[str]
    ) -> tuple[dict[str, Memory], dict[str, str]]:
        with self._read(workspace_id, snapshot=True) as conn:
            found = self._memories_in(conn, workspace_id, memory_ids)
            live = [m.id for m in found.values() if not m.deleted]
            return found, self._successors(conn, workspace_id, live)

    def _memories_in(
        self, conn: Conn, workspace_id: str, memory_ids: Sequence[str]
    ) -> dict[str, Memory]:
        found: dict[str, Memory] = {}
        for chunk in self._chunks(memory_ids):
            clause, params = self._in("id", chunk)
            rows = conn.execute(
                f"SELECT {MEMORY_COLUMNS} FROM hosted_memories WHERE workspace_id = ? AND {clause}",
                (workspace_id, *params),
            )
            found.update((row[0], self._memory(row)) for row in rows)
        return found

    def _successors(
        self, conn: Conn, workspace_id: str, memory_ids: Sequence[str]
    ) -> dict[str, str]:
        if not memory_ids:
            return {}
        clause, params = self._in("r.to_id", memory_ids)
        rows = conn.execute(
            "SELECT r.to_id, r.from_id FROM hosted_relations r JOIN hosted_memories m "
            "ON m.workspace_id = r.workspace_id AND m.id = r.from_id "
            "WHERE r.workspace_id = ? AND r.type = 'supersedes' AND NOT r.deleted "
            f"AND NOT m.deleted AND {clause} ORDER BY r.created_at",
            (workspace_id, *params),
        ).fetchall()
        return {to_id: from_id for to_id, from_id in rows}

    def indexed_ids_with_prefix(self, workspace_id: str, prefix: str, limit: int = 2) -> list[str]:
        rows = self._all(
            workspace_id,
            "SELECT id FROM hosted_memories WHERE workspace_id = ? AND substr(id, 1, ?) = ? "
            "ORDER BY id LIMIT ?",
            workspace_id,
            len(prefix),
            prefix,
            limit,
        )
        return [r[0] for r in rows]

    def indexed_relations_of(self, workspace_id: str, memory_id: str) -> list[Relation]:
        rows = self._all(
            workspace_id,
            "SELECT from_id, to_id, type, created_at FROM hosted_relations WHERE workspace_id = ? "
            "AND (from_id = ? OR to_id = ?) AND NOT deleted ORDER BY created_at",
            workspace_id,
            memory_id,
            memory_id,
        )
        return [Relation(r[0], r[1], r[2], int(r[3])) for r in rows]

    def list_indexed(
        self, workspace_id: str, filters: Filters, limit: int, offset: int
    ) -> tuple[list[Memory], int]:
        where, params = self._index_filter(filters)
        sql = f"FROM hosted_memories m WHERE m.workspace_id = ? AND {where}"
        with self._read(workspace_id, snapshot=True) as conn:
            row = conn.execute(f"SELECT COUNT(*) {sql}", (workspace_id, *params)).fetchone()
            rows = conn.execute(
                f"SELECT {MEMORY_COLUMNS} {sql} ORDER BY m.created_at DESC, m.id DESC "
                "LIMIT ? OFFSET ?",
                (workspace_id, *params, limit, offset),
            ).fetchall()
        return [self._memory(r) for r in rows], int(row[0]) if row else 0

    def older_indexed(
        self,
        workspace_id: str,
        filters: Filters,
        limit: int,
        before: tuple[int, str] | None = None,
    ) -> list[Memory]:
        where, params = self._index_filter(filters)
        if before is not None:
            # The first clause alone is a range on the creation-time index (an OR alone is not).
            where += " AND m.created_at <= ? AND (m.created_at < ? OR m.id < ?)"
            params += [before[0], before[0], before[1]]
        rows = self._all(
            workspace_id,
            f"SELECT {MEMORY_COLUMNS} FROM hosted_memories m WHERE m.workspace_id = ? AND "
            f"{where} ORDER BY m.created_at DESC, m.id DESC LIMIT ?",
            workspace_id,
            *params,
            limit,
        )
        return [self._memory(r) for r in rows]

    def live_by_hash(self, workspace_id: str, project: str, content_hash: str) -> Memory | None:
        row = self._one(
            workspace_id,
            f"SELECT {MEMORY_COLUMNS} FROM hosted_memories WHERE workspace_id = ? "
            "AND project = ? AND content_hash = ? AND NOT deleted ORDER BY id LIMIT 1",
            workspace_id,
            project,
            content_hash,
        )
        return self._memory(row) if row else None

    def topic_head(self, workspace_id: str, project: str, topic_key: str) -> Memory | None:
        row = self._one(
            workspace_id,
            f"SELECT {MEMORY_COLUMNS} FROM hosted_memories WHERE workspace_id = ? "
            "AND project = ? AND topic_key = ? ORDER BY created_at DESC, id DESC LIMIT 1",
            workspace_id,
            project,
            topic_key,
        )
        return self._memory(row) if row else None

    def indexed_relations(self, workspace_id: str, keys: Sequence[str]) -> dict[str, RelationState]:
        raise NotImplementedError

    def nearest(
        self,
        workspace_id: str,
        vector: bytes,
        filters: Filters,
        depth: int,
    ) -> Ranked:
        """Exact cosine over the workspace's vectors held in this process, brought up to the
        index's position first, in the snapshot the filter reads; a filter by project alone
        reads nothing else."""
        query = np.frombuffer(vector, dtype="<f4")
        project_only = filters.project is not None and filters == Filters(project=filters.project)
        project = filters.project if project_only else None
        if filters.empty or project_only:
            with self._read(workspace_id, snapshot=True) as conn:
                cache = self._vectors_at(conn, workspace_id)
            return cache.search(query, depth, None, project)
        with self._read(workspace_id, snapshot=True) as conn:  # the cache and filter agree
            cache = self._vectors_at(conn, workspace_id)
            where, params = self._index_filter(filters)
            allowed = [
                row[0]
                for row in conn.execute(
                    f"SELECT m.id FROM hosted_memories m WHERE m.workspace_id = ? AND {where}",
                    [workspace_id, *params],
                )
            ]
            return cache.search(query, depth, allowed, None)

    def _vectors_at(self, conn: Conn, workspace_id: str) -> HostedVectors:
        """This process's vectors of the workspace, as of ``conn``'s snapshot of its index.

        Trigger: the index started again (its workspace deleted and imported with the same id,
        or rebuilt from position 0), perhaps in another process. Why: positions then repeat, so
        the highest one applied cannot tell old rows from new. Outcome: the index's generation,
        new at every start from 0, is read in the same snapshot; another one (or a position
        below what was applied) drops the vectors, which are read again from the start."""
        row = conn.execute(
            "SELECT position, generation FROM hosted_index WHERE workspace_id = ?",
            (workspace_id,),
        ).fetchone()
        position, generation = (int(row[0]), row[1] or "") if row else (0, "")
        with self._vectors_lock:
            cache = self._vectors.get(workspace_id)
            if cache is None or cache.generation != generation or cache.seen > position:
                cache = self._vectors[workspace_id] = HostedVectors(generation)
        if cache.seen < position:
            cache.apply(self._vector_rows(conn, workspace_id, cache.seen))
        return cache

    def _vector_rows(self, conn: Conn, workspace_id: str, after: int) -> list[VectorRow]:
        """The index rows written after position ``after``, in position order."""
        column = self.dialect.vector_column
        return conn.execute(
            f"SELECT id, deleted, {column}, position, project FROM hosted_memories "
            "WHERE workspace_id = ? AND position > ? ORDER BY position",
            (workspace_id, after),
        ).fetchall()

    def keyword(
        self, workspace_id: str, terms: Sequence[Sequence[str]], filters: Filters, depth: int
    ) -> Ranked:
        match = self._match(terms)
        if not match:
            return []
        where, params = self._index_filter(filters)
        rows = self._all(
            workspace_id, self._keyword_sql(where), match, workspace_id, *params, depth
        )
        return [(memory_id, self._keyword_score(rank)) for memory_id, rank in rows]

    def _count_terms(self, conn: Conn, workspace_id: str, ids: Sequence[str], sign: int) -> None:
        """Add (``sign`` 1) or take away (-1) these memories' rows, as they stand, from the
        keyword statistics the backend keeps itself (none: its full-text index keeps them)."""

    def _match(self, terms: Sequence[Sequence[str]]) -> str:
        """The backend's full-text query for any of ``terms`` (each a phrase of tokens of word
        characters only); empty when there is nothing to match."""
        raise NotImplementedError

    def _keyword_sql(self, where: str) -> str:
        """The SELECT of (id, rank) for the parameters match, workspace id, ``where``'s and
        depth, best first."""
        raise NotImplementedError

    def _keyword_score(self, rank: Any) -> float:
        """A row's rank as a score, higher better."""
        return float(rank)

    def _memory(self, row: Sequence[Any]) -> Memory:
        return memory_of(row, self.dialect.decode_strings(row[4]))

    def _index_filter(self, filters: Filters) -> tuple[str, list[Any]]:
        """The SQL (over ``hosted_memories m``) of live memories passing ``filters``: the
        device's filter rules, with this database's list and tag clauses."""
        return filter_sql(
            filters,
            "NOT m.deleted",
            self._in,
            lambda tags: self.dialect.tags_filter("m.tags", tags),
        )
