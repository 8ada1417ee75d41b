"""The base of the SQL storage core: its transactions and the lookups every rule shares."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

from cairn.errors import NotFound
from cairn.server.storage.dialect import Conn, Dialect
from cairn.server.storage.records import Quota

ALL = "*"
"""The workspace a cross-workspace read declares (key lookup, workspace list, totals)."""


class SqlBase:
    """What the core's rules stand on; a backend supplies the dialect and the transactions."""

    dialect: Dialect
    unique_violation: type[BaseException]
    """The driver's error for a row that breaks a unique constraint."""
    path: object

    def __init__(self) -> None:
        self._begun_lock = threading.Lock()
        self._begun_counts = {"read": 0, "write": 0}

    def transactions(self) -> dict[str, int]:
        """Transactions begun since this storage opened, by access (read, write)."""
        with self._begun_lock:
            return dict(self._begun_counts)

    def _begun(self, access: str) -> None:
        """A backend counts each transaction it begins (``read`` or ``write``)."""
        with self._begun_lock:
            self._begun_counts[access] += 1

    def _write(self, workspace_id: str, durable: bool = True) -> AbstractContextManager[Conn]:
        """One write transaction over ``workspace_id``'s rows (``ALL``: every workspace's).
        ``durable=False``: metering of a read, or a fold of the index (rebuilt from the log),
        whose commit need not wait for the disk."""
        raise NotImplementedError

    def _read(self, workspace_id: str, snapshot: bool = False) -> AbstractContextManager[Conn]:
        """One read transaction; ``snapshot``: every statement in it sees the same data."""
        raise NotImplementedError

    def _one(self, workspace_id: str, sql: str, *args: Any) -> Any:
        with self._read(workspace_id) as conn:
            return conn.execute(sql, args).fetchone()

    def _all(self, workspace_id: str, sql: str, *args: Any) -> list[Any]:
        with self._read(workspace_id) as conn:
            return conn.execute(sql, args).fetchall()

    def _in(self, column: str, values: Any) -> tuple[str, list[Any]]:
        return self.dialect.in_list(column, list(values))

    def _chunks(self, values: Any) -> Iterator[list[Any]]:
        return self.dialect.chunks(list(values))

    def _latest(self, conn: Conn, workspace_id: str, lock: bool = False) -> int:
        """The workspace's last seq (NotFound if there is no such workspace); ``lock``: hold
        its row until commit, so writers of one workspace take turns."""
        row = conn.execute(
            "SELECT latest_seq FROM workspaces WHERE id = ?" + (self.dialect.lock_row * lock),
            (workspace_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no workspace with id {workspace_id!r}")
        return int(row[0])

    @staticmethod
    def _quota(conn: Conn, workspace_id: str) -> Quota:
        row = conn.execute(
            "SELECT max_mutations, max_bytes FROM workspaces WHERE id = ?", (workspace_id,)
        ).fetchone()
        return Quota(*row) if row else Quota()

    @staticmethod
    def _bytes(conn: Conn, workspace_id: str) -> int:
        row = conn.execute(
            "SELECT stored_bytes FROM workspaces WHERE id = ?", (workspace_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _position(conn: Conn, workspace_id: str) -> int:
        row = conn.execute(
            "SELECT position FROM hosted_index WHERE workspace_id = ?", (workspace_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    def _audit(
        self,
        conn: Conn,
        workspace_id: str,
        key_id: str | None,
        action: str,
        detail: dict[str, Any],
        now: int,
    ) -> None:
        conn.execute(
            "INSERT INTO audit (workspace_id, at, key_id, action, detail) "
            f"VALUES (?, ?, ?, ?, {self.dialect.json_marker})",
            (workspace_id, now, key_id, action, self.dialect.encode_json(detail)),
        )
