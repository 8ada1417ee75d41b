"""What differs between the server's databases: lists, JSON, vectors, row locks, id lists.

The core (``cairn.server.storage.core``) writes its SQL once, with ``?`` placeholders and
table-qualified upsert expressions, which SQLite and PostgreSQL both read the same way; each
backend's connection turns ``?`` into its driver's placeholder. What the two databases spell
differently is asked of a ``Dialect``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from cairn.server.storage.records import INDEX_DIM


class Cursor(Protocol):
    """What the core reads from a statement's result."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """A connection inside one transaction, taking SQL with ``?`` placeholders."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> Any: ...


class Dialect:
    """How one database spells what the core needs; every method is pure."""

    lock_row = ""
    """Appended to the SELECT of a workspace's row to hold off other writers until commit."""
    audit_order = "rowid"
    """The column that orders audit entries written in the same millisecond."""
    vector_column = "vector"
    """The ``hosted_memories`` column holding a memory's vector."""
    vector_marker = "?"
    """The placeholder of a vector in an INSERT."""
    json_marker = "?"
    """The placeholder of a JSON document in an INSERT."""
    chunk = 500
    """The most values one ``in_list`` may hold."""
    index_tables: tuple[str, ...] = ()
    """Tables of a hosted workspace's search index that only this database keeps."""
    schema_version = "PRAGMA user_version"
    """The query whose one value is how many schema migrations ran."""

    def json_int(self, column: str, key: str) -> str:
        """SQL for the integer under ``key`` of the JSON document in ``column``."""
        return f"CAST(json_extract({column}, '$.{key}') AS INTEGER)"

    def in_list(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """SQL and parameters for ``column`` being one of ``values``."""
        return f"{column} IN ({', '.join('?' * len(values))})", list(values)

    def chunks(self, values: Sequence[Any]) -> Iterator[list[Any]]:
        """``values`` in lists of at most ``chunk`` (none when empty)."""
        for start in range(0, len(values), self.chunk):
            yield list(values[start : start + self.chunk])

    def tags_filter(self, column: str, tags: Sequence[str]) -> tuple[list[str], list[Any]]:
        """Clauses and parameters for ``column`` (a list of tags) holding every one of ``tags``."""
        clause = f"EXISTS (SELECT 1 FROM json_each({column}) WHERE value = ?)"
        return [clause] * len(tags), list(tags)

    def encode_strings(self, values: Sequence[str]) -> Any:
        return json.dumps(list(values))

    def decode_strings(self, value: Any) -> list[str]:
        decoded: list[str] = json.loads(value)
        return decoded

    def encode_ints(self, values: Iterable[int]) -> Any:
        """A set of ints as the column stores it (sorted, without repeats)."""
        return json.dumps(sorted(set(values)))

    def decode_ints(self, value: Any) -> tuple[int, ...]:
        return tuple(json.loads(value))

    def encode_json(self, value: dict[str, Any]) -> str:
        return json.dumps(value, sort_keys=True)

    def decode_json(self, value: Any) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(value)
        return decoded

    def encode_vector(self, vector: bytes | None) -> Any:
        return vector


class SqliteDialect(Dialect):
    """SQLite: lists and JSON as text, vectors as float32 blobs; its one writer needs no locks."""


class PostgresDialect(Dialect):
    """PostgreSQL: arrays, JSONB, pgvector; writers of a workspace take its row's lock."""

    # FOR NO KEY UPDATE: serialises pushes, yet lets the foreign-key checks of rows that
    # reference the workspace (usage, audit: FOR KEY SHARE) through, so a pull's metering
    # never waits on a push that waits on it.
    lock_row = " FOR NO KEY UPDATE"
    audit_order = "id"
    vector_column = "embedding"
    vector_marker = "?::vector"
    json_marker = "?::jsonb"
    chunk = 2**62
    index_tables = ("hosted_postings", "hosted_terms")
    schema_version = "SELECT version FROM cairn_schema"

    def json_int(self, column: str, key: str) -> str:
        return f"({column} ->> '{key}')::bigint"

    def in_list(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?)", [list(values)]

    def tags_filter(self, column: str, tags: Sequence[str]) -> tuple[list[str], list[Any]]:
        return ([f"{column} @> ?"], [list(tags)]) if tags else ([], [])

    def encode_strings(self, values: Sequence[str]) -> Any:
        return list(values)

    def decode_strings(self, value: Any) -> list[str]:
        return list(value)

    def encode_ints(self, values: Iterable[int]) -> Any:
        return sorted(set(values))

    def decode_ints(self, value: Any) -> tuple[int, ...]:
        return tuple(value)

    def decode_json(self, value: Any) -> dict[str, Any]:
        return dict(value)

    def encode_vector(self, vector: bytes | None) -> Vector | None:
        """A float32 vector for pgvector (None, or the wrong width, stays NULL)."""
        if vector is None or len(vector) != INDEX_DIM * 4:
            return None
        return Vector(vector)


class Vector:
    """A float32 vector (little-endian bytes) sent as a ``?::vector`` parameter; the
    PostgreSQL storage sends it in pgvector's binary form."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data
