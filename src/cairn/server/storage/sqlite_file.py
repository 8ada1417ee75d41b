"""One SQLite file shared by threads: a connection per thread, migrations, transactions.

Per-thread connections let readers work on a WAL snapshot while one writer commits; writes
take ``BEGIN IMMEDIATE`` so SQLite admits one writer at a time instead of failing at commit.
SQLite's exceptions leave this module as Cairn errors that say what to do next. Opening a
connection, reading SQLite's errors and running a migration are the device store's
(``cairn.store.db``); what differs is the server's: a connection per thread, every commit
flushed to disk, every migration in one transaction.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cairn.errors import SchemaTooNew, StoreCorrupt, StoreError, StoreLocked
from cairn.store.db import apply_migration, connect, failure, use_wal

BUSY_TIMEOUT_MS = 10_000


class SqliteFile:
    """The database at ``path``, migrated on open to the last of ``migrations``."""

    def __init__(self, path: Path, migrations: Sequence[str]) -> None:
        self.path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {path.parent}: {exc}; check the --data path") from exc
        self._migrate(migrations)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: everything inside commits together or not at all."""
        with self._transaction("BEGIN IMMEDIATE") as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query inside sees the same snapshot."""
        with self._transaction("BEGIN") as conn:
            yield conn

    def close(self) -> None:
        """Close every thread's connection (a later call opens a fresh one)."""
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
            self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            conn = connect(self.path, BUSY_TIMEOUT_MS)  # any thread: close() closes them all
            # An acknowledged push must survive a power cut: fsync on every commit.
            use_wal(conn, "FULL")
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
        with self._lock:
            self._connections.append(conn)
            self._local.conn = conn
        return conn

    def _migrate(self, migrations: Sequence[str]) -> None:
        with self.write() as conn:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > len(migrations):
                raise SchemaTooNew(
                    f"{self.path} was written by a newer Cairn server (schema {version}, this "
                    f"one knows {len(migrations)}); upgrade cairn"
                )
            for number in range(version, len(migrations)):
                apply_migration(conn, migrations[number], number + 1)

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        try:
            conn.execute(begin)
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._translate(exc) from exc
            raise

    def _translate(self, exc: sqlite3.Error) -> StoreError:
        found = failure(exc)
        if found == "busy":
            return StoreLocked(
                f"the server database {self.path} stayed locked for "
                f"{BUSY_TIMEOUT_MS // 1000} s; retry shortly"
            )
        if found is not None:
            return StoreCorrupt(
                f"{self.path} is not a readable Cairn server database ({exc}); restore it "
                "from a backup or point --data elsewhere"
            )
        return StoreError(f"SQLite error on {self.path}: {exc}")
