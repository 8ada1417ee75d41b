"""The sync server's PostgreSQL storage: many stateless app processes over one database.

``cairn server run --db postgresql://user@host/db`` (or ``CAIRN_SERVER_DB``) uses it instead of
the embedded SQLite file. psycopg 3 with a connection pool; numbered migrations, applied under an
advisory lock so several app processes starting at once migrate once.

Sequence numbers: a push locks its workspace's row (``SELECT ... FOR NO KEY UPDATE``) for the
length of its transaction, numbers the new mutations from the ``latest_seq`` it read, and writes
both before it commits. Pushes to one workspace therefore commit one at a time in seq order, and a
pull reads the rows and ``latest_seq`` in one snapshot (REPEATABLE READ): it can never see seq 8
without 7, nor hand out a cursor past a mutation that commits later. A push that fails rolls
back its numbers with it, so sequences stay gapless.

Tenancy, twice over: every query filters by ``workspace_id``, and row-level security (forced,
so it binds the tables' owner too) lets a transaction see only the rows of the workspace it
declared (``SET LOCAL cairn.workspace_id``). A query that forgot its filter still returns one
workspace's rows. Only the few cross-workspace reads (finding a request's API key, listing
workspaces, totals for metrics) declare ``*``. The app must connect as a role that is not a
superuser (superusers bypass row-level security); ``compose.yaml`` does.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import numpy as np
import psycopg
from psycopg import errors as pg_errors
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.types import TypeInfo
from psycopg_pool import ConnectionPool, PoolTimeout

from cairn.errors import InvalidInput, StoreError
from cairn.model import Filters
from cairn.replication import RelationState
from cairn.server.storage import postgres_bm25 as bm25
from cairn.server.storage.core import SqlStorage
from cairn.server.storage.dialect import Conn, PostgresDialect, Vector
from cairn.server.storage.hosted_vectors import VectorRow
from cairn.server.storage.index import upsert_set
from cairn.server.storage.postgres_schema import migrate
from cairn.server.storage.records import (
    INDEX_DIM,
    MEMORY_COLUMNS,
    IndexedMemory,
    Ranked,
    memory_values,
)
from cairn.server.storage.sql import ALL

_NO_FLUSH = "SET LOCAL synchronous_commit = off"
"""For metering a read (a pull, a recall): the reader does not wait for the WAL flush. A crash
may lose the last few hundred ms of such counts and audit entries, never a stored change."""


class PostgresStorage(SqlStorage):
    """``ServerStorage`` over a PostgreSQL database; safe to share between threads."""

    dialect = PostgresDialect()
    unique_violation = pg_errors.UniqueViolation
    fold_ahead = True

    def __init__(self, url: str, min_size: int = 1, max_size: int = 8) -> None:
        super().__init__()
        self.path = _redacted(url)
        """Where the data is, for messages (the password left out)."""
        try:  # one plain connection first: a wrong URL fails fast, with PostgreSQL's reason
            psycopg.connect(url, connect_timeout=10).close()
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(
                f"cannot connect to PostgreSQL at {self.path}: {reason}; check --db "
                "(postgresql://user:password@host:5432/database) and that the server runs"
            ) from exc
        self._pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=30,
            open=False,
            kwargs={"autocommit": False},
            configure=_configure,
        )
        try:
            self._pool.open(wait=True, timeout=30)
        except PoolTimeout as exc:
            self._pool.close()
            raise StoreError(
                f"cannot connect to PostgreSQL at {self.path} within 30 s; check --db "
                "(postgresql://user:password@host:5432/database) and that the server runs"
            ) from exc
        with self._tx(ALL) as conn:
            migrate(conn, self.path)

    def close(self) -> None:
        self._pool.close()

    # -- transactions -------------------------------------------------------------------------

    @contextmanager
    def _tx(self, workspace_id: str, snapshot: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """One transaction that sees only ``workspace_id``'s rows (``ALL``: every workspace);
        ``snapshot``: every statement in it reads the same snapshot."""
        try:
            with self._pool.connection() as conn, conn.transaction():
                if snapshot:
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                conn.execute("SELECT set_config('cairn.workspace_id', %s, true)", (workspace_id,))
                yield conn
        except PoolTimeout as exc:
            raise StoreError(
                f"no connection to PostgreSQL at {self.path} became free within 30 s"
            ) from exc
        except psycopg.OperationalError as exc:
            raise StoreError(f"PostgreSQL at {self.path}: {exc}") from exc

    @contextmanager
    def _write(self, workspace_id: str, durable: bool = True) -> Iterator[_Conn]:
        self._begun("write")
        with self._tx(workspace_id) as conn:
            if not durable:
                conn.execute(_NO_FLUSH)
            yield _Conn(conn)

    @contextmanager
    def _read(self, workspace_id: str, snapshot: bool = False) -> Iterator[_Conn]:
        self._begun("read")
        with self._tx(workspace_id, snapshot) as conn:
            yield _Conn(conn)

    # -- what only PostgreSQL answers ---------------------------------------------------------

    def indexed_relations(self, workspace_id: str, keys: Sequence[str]) -> dict[str, RelationState]:
        parts = [key.split("|", 2) for key in keys]  # from_id, type, to_id: the primary key
        rows = self._all(
            workspace_id,
            "SELECT from_id, to_id, type, created_at, deleted, hlc FROM hosted_relations "
            "WHERE workspace_id = ? AND (from_id, type, to_id) IN "
            "(SELECT * FROM unnest(?::text[], ?::text[], ?::text[]))",
            workspace_id,
            [p[0] for p in parts],
            [p[1] for p in parts],
            [p[2] for p in parts],
        )
        states = [RelationState(*row) for row in rows]
        return {state.key: state for state in states}

    def keyword(
        self, workspace_id: str, terms: Sequence[Sequence[str]], filters: Filters, depth: int
    ) -> Ranked:
        phrases = [" ".join(tokens) for tokens in terms if tokens]
        if not phrases:
            return []
        where, params = (None, []) if filters.empty else self._index_filter(filters)
        rows = self._all(
            workspace_id,
            bm25.ranking_sql(where),
            workspace_id,
            phrases,
            workspace_id,
            workspace_id,
            *params,
            depth,
        )
        return [(memory_id, float(rank)) for memory_id, rank in rows]

    def _count_terms(self, conn: Conn, workspace_id: str, ids: Sequence[str], sign: int) -> None:
        bm25.count_terms(conn, workspace_id, ids, sign)

    def _put_memories(
        self, conn: Conn, workspace_id: str, memories: Sequence[IndexedMemory], position: int
    ) -> None:
        # One statement over arrays, not a statement per row: a fold writes pages of 2000.
        if not memories:
            return
        rows = [memory_values(m.memory, json.dumps(m.memory.tags)) for m in memories]
        columns = list(zip(*rows, strict=True))
        assert isinstance(conn, _Conn)
        # psycopg's placeholders, every array in binary (%b): the vectors must be, and text
        # arrays in text form cost a quoting pass per element in Python (a sixth of a fold).
        conn.native(
            f"INSERT INTO hosted_memories (workspace_id, {MEMORY_COLUMNS}, payload, embedding, "
            "position) SELECT %s, u.id, u.content, u.kind, u.project, "
            "ARRAY(SELECT jsonb_array_elements_text(u.tags::jsonb)), u.topic_key, u.source, "
            "u.created_at, u.updated_at, u.deleted, u.content_hash, u.model_id, u.hlc, u.payload, "
            "u.embedding, %s FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], "
            "%b::text[], %b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::boolean[], "
            "%b::text[], %b::text[], %b::text[], %b::bytea[], %b::vector[]) AS u(id, content, "
            "kind, project, tags, topic_key, source, created_at, updated_at, deleted, "
            "content_hash, model_id, hlc, payload, embedding) "
            f"ON CONFLICT (workspace_id, id) DO UPDATE SET {upsert_set('embedding')}",
            (
                workspace_id,
                position,
                *(list(column) for column in columns),
                [m.payload for m in memories],
                [self.dialect.encode_vector(m.vector) for m in memories],
            ),
        )

    def _vector_rows(self, conn: Conn, workspace_id: str, after: int) -> list[VectorRow]:
        assert isinstance(conn, _Conn)
        rows = conn.binary(
            "SELECT id, deleted, embedding, position, project FROM hosted_memories "
            "WHERE workspace_id = ? AND position > ? ORDER BY position",
            (workspace_id, after),
        )
        vectors = iter(_floats32([row[2] for row in rows if row[2] is not None]))
        return [
            (memory_id, deleted, None if vector is None else next(vectors), position, project)
            for memory_id, deleted, vector, position, project in rows
        ]


class _Conn:
    """A psycopg connection taking the core's SQL: ``?`` placeholders, ``%`` as itself."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        return self._conn.execute(_native(sql), parameters)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> None:
        self._conn.cursor().executemany(_native(sql), rows)

    def native(self, sql: str, parameters: Sequence[Any]) -> None:
        """Run SQL written with psycopg's own placeholders."""
        self._conn.execute(sql.encode(), parameters)

    def binary(self, sql: str, parameters: Sequence[Any]) -> list[Any]:
        """The rows of a SELECT, read in binary (a vector as pgvector's binary form)."""
        return self._conn.cursor(binary=True).execute(_native(sql), parameters).fetchall()


class _VectorDumper(Dumper):
    """A ``Vector`` in pgvector's binary form: dimensions, a reserved word, big-endian floats.
    Sent without a type: the query's ``::vector`` gives it one."""

    format = Format.BINARY

    def dump(self, obj: Vector) -> bytes:
        values = np.frombuffer(obj.data, dtype="<f4")
        return _HEAD.pack(values.size, 0) + values.astype(">f4").tobytes()


_HEAD = struct.Struct(">HH")


def _floats32(values: Sequence[bytes]) -> list[bytes]:
    """Vectors read in pgvector's binary form as little-endian float32 bytes: one conversion
    for them all (the first recall of a workspace reads every one) when they are one width."""
    width = _HEAD.size + INDEX_DIM * 4
    if any(len(value) != width for value in values):
        return [_float32(value) for value in values]
    rows = np.frombuffer(b"".join(values), dtype=np.uint8).reshape(len(values), width)
    data = np.ascontiguousarray(rows[:, _HEAD.size :]).view(">f4").astype("<f4").tobytes()
    step = INDEX_DIM * 4
    return [data[at : at + step] for at in range(0, len(data), step)]


def _float32(value: bytes) -> bytes:
    """A vector read in pgvector's binary form as little-endian float32 bytes."""
    dim = _HEAD.unpack_from(value)[0]
    return np.frombuffer(value, dtype=">f4", count=dim, offset=_HEAD.size).astype("<f4").tobytes()


@lru_cache(maxsize=256)
def _native(sql: str) -> bytes:
    """The core's SQL with psycopg's placeholders (``%s``; a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s").encode()


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Vectors go in pgvector's binary form, typed when the extension is there already (so a
    list of them is a ``vector[]``), untyped before the first migration creates it."""
    info = TypeInfo.fetch(conn, "vector")
    conn.commit()
    if info is None:
        conn.adapters.register_dumper(Vector, _VectorDumper)
        return
    info.register(conn)
    typed = type("_TypedVectorDumper", (_VectorDumper,), {"oid": info.oid})
    conn.adapters.register_dumper(Vector, typed)


def _redacted(url: str) -> str:
    """The URL without its password."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        reason = str(exc).strip()
        raise InvalidInput(
            f"--db: {reason}; give postgresql://user:password@host:5432/database"
        ) from exc
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo("", **info)
