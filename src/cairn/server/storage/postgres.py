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

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from cairn.errors import InvalidInput, StoreError
from cairn.model import Filters
from cairn.replication import RelationState
from cairn.server.storage.core import SqlStorage
from cairn.server.storage.dialect import PostgresDialect
from cairn.server.storage.postgres_schema import migrate
from cairn.server.storage.records import Ranked
from cairn.server.storage.sql import ALL

EF_SEARCH = 100
"""HNSW candidates examined per query (pgvector's default, 40, is under recall's depth of 50)."""
MAX_EF_SEARCH = 1000
"""pgvector's ceiling for hnsw.ef_search; deeper recalls rely on its iterative scan for more.
(A recall of limit 1000 asks for depth 4000: setting that was an error, a 500.)"""
_NO_FLUSH = "SET LOCAL synchronous_commit = off"
"""For metering a read (a pull, a recall): the reader does not wait for the WAL flush. A crash
may lose the last few hundred ms of such counts and audit entries, never a stored change."""


class PostgresStorage(SqlStorage):
    """``ServerStorage`` over a PostgreSQL database; safe to share between threads."""

    dialect = PostgresDialect()
    unique_violation = pg_errors.UniqueViolation

    def __init__(self, url: str, min_size: int = 1, max_size: int = 8) -> None:
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
        with self._tx(workspace_id) as conn:
            if not durable:
                conn.execute(_NO_FLUSH)
            yield _Conn(conn)

    @contextmanager
    def _read(self, workspace_id: str, snapshot: bool = False) -> Iterator[_Conn]:
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

    def nearest(self, workspace_id: str, vector: bytes, filters: Filters, depth: int) -> Ranked:
        where, params = self._index_filter(filters)
        query = self.dialect.encode_vector(vector)
        with self._read(workspace_id) as conn:
            # Iterative scans keep walking the HNSW graph until enough rows pass the filters
            # (this workspace's, the project's...), instead of filtering one fixed candidate set.
            conn.execute(
                "SELECT set_config('hnsw.ef_search', ?, true), "
                "set_config('hnsw.iterative_scan', 'relaxed_order', true)",
                (str(min(max(EF_SEARCH, depth), MAX_EF_SEARCH)),),
            )
            rows = conn.execute(
                "SELECT m.id, 1 - (m.embedding <=> ?::vector) AS cosine FROM hosted_memories m "
                f"WHERE m.workspace_id = ? AND m.embedding IS NOT NULL AND {where} "
                "ORDER BY m.embedding <=> ?::vector LIMIT ?",
                (query, workspace_id, *params, query, depth),
            ).fetchall()
        ranked = [(memory_id, float(cosine)) for memory_id, cosine in rows]
        ranked.sort(key=lambda r: -r[1])  # relaxed order: nearly sorted
        return ranked

    def _match(self, terms: Sequence[Sequence[str]]) -> str:
        return " | ".join(
            "(" + " <-> ".join(f"'{token}'" for token in tokens) + ")" for tokens in terms if tokens
        )

    def _keyword_sql(self, where: str) -> str:
        return (
            "SELECT m.id, ts_rank_cd(m.words, q) AS rank "
            "FROM hosted_memories m, to_tsquery('english'::regconfig, ?) q "
            f"WHERE m.workspace_id = ? AND m.words @@ q AND {where} "
            "ORDER BY rank DESC, m.id LIMIT ?"
        )


class _Conn:
    """A psycopg connection taking the core's SQL: ``?`` placeholders, ``%`` as itself."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        return self._conn.execute(_native(sql), parameters)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> None:
        self._conn.cursor().executemany(_native(sql), rows)


@lru_cache(maxsize=256)
def _native(sql: str) -> bytes:
    """The core's SQL with psycopg's placeholders (``%s``; a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s").encode()


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
