"""Opening the SQLite store: pragmas, migrations, transactions, and SQLite errors translated.

Every SQLite error leaves this module as a Cairn error (``translate``), and cleaning up after
one (a rollback SQLite may already have done itself) never hides it: a damaged page surfaces
as ``StoreCorrupt``, which tells the user to run ``cairn repair``.

Writes wait for another process's write lock for up to ``WRITE_WAIT_S`` (a minute), in short
slices, so that reads by other threads on the same connection are not held up meanwhile; a
memory is never dropped because another process was writing for a few seconds.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from cairn.errors import SchemaTooNew, StoreCorrupt, StoreError, StoreLocked
from cairn.store.migrations import MIGRATIONS

BUSY_TIMEOUT_MS = 5000
"""How long one statement (a read, a migration) waits for a lock before failing."""
WRITE_WAIT_S = 60.0
"""How long a write transaction waits for another process's writer before failing."""
_SLICE_MS = 100
"""One attempt at the write lock: this connection's other threads may read between attempts."""

_BUSY, _LOCKED, _CORRUPT, _NOTADB = 5, 6, 11, 26  # SQLite's primary result codes

REPAIR_HINT = (
    "run `cairn repair` to salvage what can be read into a new store (the damaged file is "
    "kept aside, and with sync set up the rest is pulled back from the remote); stop agents "
    "and `cairn serve` using it first"
)


def _code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` says another connection holds a lock this one needs."""
    code = _code(exc)
    if code is not None:
        return code in (_BUSY, _LOCKED)
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def failure(exc: sqlite3.Error) -> str | None:
    """What a SQLite error says of the file: "busy" (locked by another connection), "not a
    database", "damaged", or None (something else)."""
    code, text = _code(exc), str(exc).lower()
    if is_busy(exc):
        return "busy"
    if code == _NOTADB or "not a database" in text:
        return "not a database"
    if code == _CORRUPT or "malformed" in text or "corrupt" in text:
        return "damaged"
    return None


def translate(exc: sqlite3.Error, path: Path) -> StoreError:
    """A Cairn error, with what to do next, for a SQLite error on ``path``."""
    found = failure(exc)
    if found == "busy":
        return StoreLocked(
            f"{path} is locked by another process for longer than "
            f"{BUSY_TIMEOUT_MS // 1000} s; retry, or stop the process holding it"
        )
    if found == "not a database":
        return StoreCorrupt(
            f"{path} is not a readable Cairn store ({exc}); if it is your store, {REPAIR_HINT}; "
            "otherwise point CAIRN_HOME (or CAIRN_DB) elsewhere"
        )
    if found == "damaged":
        return StoreCorrupt(f"{path} is damaged ({exc}); {REPAIR_HINT}")
    return StoreError(f"SQLite error on {path}: {exc}")


def connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    """A connection to ``path`` in autocommit mode (transactions are begun explicitly), usable
    from any thread, that waits up to ``busy_timeout_ms`` for another's lock."""
    conn = sqlite3.connect(
        str(path),
        isolation_level=None,
        check_same_thread=False,
        timeout=busy_timeout_ms / 1000,
    )
    conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    return conn


def use_wal(conn: sqlite3.Connection, synchronous: str) -> None:
    """Write-ahead logging (readers never wait for the writer), with ``synchronous`` (NORMAL,
    or FULL: fsync every commit), and foreign keys enforced."""
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = ON")


def apply_migration(conn: sqlite3.Connection, script: str, number: int) -> None:
    """Run migration ``number`` (its statements one by one, inside the caller's transaction:
    executescript would commit it) and record it in ``user_version``."""
    for statement in statements(script):
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {number}")


class Database:
    """One connection to a store file, shared by threads under a lock; writes are transactions.

    ``write_wait`` bounds how long a write waits for another process's writer; ``on_wait``, if
    set, is called once per write that has to wait (the CLI says so on stderr).
    """

    def __init__(self, path: Path, write_wait: float = WRITE_WAIT_S) -> None:
        self.path = path
        self.write_wait = write_wait
        self.on_wait: Callable[[Path, float], None] | None = None
        self.lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {path.parent}: {exc}") from exc
        try:
            self.conn = connect(path, BUSY_TIMEOUT_MS)
            if self._check_version() == 0:  # before anything writes to a file we may not understand
                # 8 KiB pages hold five 384-d vectors; 4 KiB pages hold only two.
                self.conn.execute("PRAGMA page_size = 8192")
            use_wal(self.conn, "NORMAL")
            # 64 MiB of page cache (default 2 MiB): large pulls and imports touch many index pages.
            self.conn.execute("PRAGMA cache_size = -65536")
            self._migrate()
        except sqlite3.Error as exc:
            raise translate(exc, path) from exc

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE): everything inside commits or nothing does."""
        self._begin_write()
        try:
            try:
                yield self.conn
            except BaseException as exc:
                self._abandon()
                if isinstance(exc, sqlite3.Error):
                    raise translate(exc, self.path) from exc
                raise
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._abandon()
                raise translate(exc, self.path) from exc
        finally:
            self.lock.release()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent read: one snapshot for everything inside."""
        with self.lock:
            try:
                self.conn.execute("BEGIN")
                yield self.conn
            except BaseException as exc:
                self._abandon()
                if isinstance(exc, sqlite3.Error):
                    raise translate(exc, self.path) from exc
                raise
            try:
                if self.conn.in_transaction:
                    self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._abandon()
                raise translate(exc, self.path) from exc

    def _begin_write(self) -> None:
        """BEGIN IMMEDIATE, waiting up to ``write_wait`` for another process's writer; returns
        holding ``self.lock``.

        Trigger: another process (an import, a sync, someone's `sqlite3` shell) holds the write
        lock. Why: a memory an agent remembers must not be lost to a few seconds of contention,
        yet a wait must end. Outcome: attempts of ``_SLICE_MS`` each, releasing ``self.lock``
        between them so this connection's readers in other threads go on; ``StoreLocked`` once
        the bound has passed, with nothing written.
        """
        deadline = time.monotonic() + self.write_wait
        told = False
        while True:
            self.lock.acquire()
            try:
                self.conn.execute(f"PRAGMA busy_timeout = {_SLICE_MS}")
                try:
                    self.conn.execute("BEGIN IMMEDIATE")
                finally:
                    self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                return
            except sqlite3.Error as exc:
                self.lock.release()
                if not is_busy(exc):
                    raise translate(exc, self.path) from exc
                if time.monotonic() >= deadline:
                    raise StoreLocked(
                        f"{self.path} stayed locked by another process's write for "
                        f"{self.write_wait:g} s, so nothing was written; retry when it is done, "
                        "or stop the process holding it"
                    ) from exc
                if not told and self.on_wait is not None:
                    told = True
                    self.on_wait(self.path, self.write_wait)
            except BaseException:
                self.lock.release()
                raise
            time.sleep(0.002)  # lets a reader waiting on self.lock take its turn

    def _abandon(self) -> None:
        """Roll back an open transaction. SQLite rolls back by itself on some errors (a damaged
        page, a full disk), so a failure here must never hide the error that led here."""
        if self.conn.in_transaction:
            with suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")

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
                    apply_migration(self.conn, MIGRATIONS[number - 1], number)
                self.conn.execute("COMMIT")
            except BaseException:
                self._abandon()
                raise


def statements(script: str) -> Iterator[str]:
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
