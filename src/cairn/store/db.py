"""Opening the SQLite store: pragmas, migrations, transactions, and SQLite errors translated."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cairn.errors import SchemaTooNew, StoreCorrupt, StoreError, StoreLocked
from cairn.store.migrations import MIGRATIONS

BUSY_TIMEOUT_MS = 5000


def translate(exc: sqlite3.Error, path: Path) -> StoreError:
    """A Cairn error, with what to do next, for a SQLite error on ``path``."""
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return StoreLocked(
            f"{path} is locked by another process for longer than "
            f"{BUSY_TIMEOUT_MS // 1000} s; retry, or stop the process holding it"
        )
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return StoreCorrupt(
            f"{path} is not a readable Cairn store ({exc}); restore it from a backup, or move "
            "it aside to start a new store (with sync set up, `cairn sync setup` and "
            "`cairn sync now` bring back what was synced), or point CAIRN_HOME elsewhere"
        )
    return StoreError(f"SQLite error on {path}: {exc}")


class Database:
    """One connection to a store file, shared by threads under a lock; writes are transactions."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {path.parent}: {exc}") from exc
        try:
            self.conn = sqlite3.connect(
                str(path),
                isolation_level=None,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if self._check_version() == 0:  # before anything writes to a file we may not understand
                # 8 KiB pages hold five 384-d vectors; 4 KiB pages hold only two.
                self.conn.execute("PRAGMA page_size = 8192")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            # 64 MiB of page cache (default 2 MiB): large pulls and imports touch many index pages.
            self.conn.execute("PRAGMA cache_size = -65536")
            self.conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.Error as exc:
            raise translate(exc, path) from exc

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE): everything inside commits or nothing does."""
        with self.lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise translate(exc, self.path) from exc
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self.conn.execute("ROLLBACK")
                raise translate(exc, self.path) from exc

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent read: one snapshot for everything inside."""
        with self.lock:
            try:
                self.conn.execute("BEGIN")
                yield self.conn
            except sqlite3.Error as exc:
                raise translate(exc, self.path) from exc
            finally:
                if self.conn.in_transaction:
                    self.conn.execute("COMMIT")

    def _check_version(self) -> int:
        version = int(self.conn.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise SchemaTooNew(
                f"{self.path} was written by a newer Cairn (schema {version}, this one knows "
                f"{len(MIGRATIONS)}); upgrade Cairn (`pip install -U cairn-memory`)"
            )
        return version

    def _migrate(self) -> None:
        version = self._check_version()
        for number in range(version + 1, len(MIGRATIONS) + 1):
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                # Re-check inside the lock: another process may have migrated meanwhile.
                current = int(self.conn.execute("PRAGMA user_version").fetchone()[0])
                if current < number:
                    for statement in _statements(MIGRATIONS[number - 1]):
                        self.conn.execute(statement)
                    self.conn.execute(f"PRAGMA user_version = {number}")
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise


def _statements(script: str) -> Iterator[str]:
    """Split a migration into statements (executescript would commit our transaction)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer.strip()
            buffer = ""
    if buffer.strip():
        yield buffer.strip()
