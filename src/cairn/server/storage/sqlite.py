"""The sync server's embedded database: one SQLite file (WAL), so `cairn server run` needs nothing.

Every write is one ``BEGIN IMMEDIATE`` transaction: SQLite admits one writer at a time, which is
what makes per-workspace sequence numbers commit in order (a reader can never see seq 8 before
7). Hosted workspaces' vectors are searched in memory (``hosted_vectors``), their words with FTS5.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cairn.replication import RelationState
from cairn.server.storage.core import SqlStorage
from cairn.server.storage.dialect import SqliteDialect
from cairn.server.storage.sqlite_file import SqliteFile
from cairn.server.storage.sqlite_schema import MIGRATIONS


class SqliteStorage(SqlStorage):
    """``ServerStorage`` over one SQLite file; safe to share between threads."""

    dialect = SqliteDialect()
    unique_violation = sqlite3.IntegrityError
    fold_ahead = False

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._db = SqliteFile(path, MIGRATIONS)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _write(self, workspace_id: str, durable: bool = True) -> Iterator[sqlite3.Connection]:
        self._begun("write")
        with self._db.write() as conn:
            yield conn

    @contextmanager
    def _read(self, workspace_id: str, snapshot: bool = False) -> Iterator[sqlite3.Connection]:
        self._begun("read")
        with self._db.read() as conn:  # always one snapshot
            yield conn

    # -- what only SQLite answers -------------------------------------------------------------

    def indexed_relations(self, workspace_id: str, keys: Sequence[str]) -> dict[str, RelationState]:
        found: dict[str, RelationState] = {}
        with self._read(workspace_id) as conn:
            for key in keys:
                from_id, type_, to_id = key.split("|", 2)
                row = conn.execute(
                    "SELECT created_at, deleted, hlc FROM hosted_relations WHERE workspace_id = ? "
                    "AND from_id = ? AND type = ? AND to_id = ?",
                    (workspace_id, from_id, type_, to_id),
                ).fetchone()
                if row:
                    found[key] = RelationState(from_id, to_id, type_, row[0], bool(row[1]), row[2])
        return found

    def _match(self, terms: Sequence[Sequence[str]]) -> str:
        return " OR ".join('"' + " ".join(tokens) + '"' for tokens in terms if tokens)

    def _keyword_sql(self, where: str) -> str:
        return (
            "SELECT m.id, bm25(hosted_fts) AS rank FROM hosted_fts "
            "JOIN hosted_memories m ON m.rowid = hosted_fts.rowid "
            f"WHERE hosted_fts MATCH ? AND m.workspace_id = ? AND {where} ORDER BY rank LIMIT ?"
        )

    def _keyword_score(self, rank: Any) -> float:
        score: float = -rank  # bm25: lower is better
        return score
