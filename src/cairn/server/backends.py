"""Which storage a sync server uses, and how its processes tell each other of pushes.

PostgreSQL given a database URL (LISTEN/NOTIFY), else embedded SQLite (sockets beside the file,
for the processes of one host). The SQLite file lives under the server's data folder. This is
the one place that decides, for the CLI and each worker."""

from __future__ import annotations

import os
from pathlib import Path

from cairn.errors import InvalidInput
from cairn.server.notify import ALL_KEYS, KEYS, Notifier
from cairn.server.notify.unix import UnixNotifier
from cairn.server.notify.unix import announce_once as tell_sockets
from cairn.server.storage import ServerStorage
from cairn.server.storage.sqlite import SqliteStorage

DB_FILE = "server.db"
NOTIFY_FOLDER = "server.db.notify"
"""Beside the SQLite file: a socket per server process, through which each wakes the others."""


def data_dir(data: Path | None) -> Path:
    """Where the server keeps its SQLite file: ``data``, else $CAIRN_SERVER_DATA, else
    $CAIRN_HOME/server, else ~/.cairn/server."""
    if data is not None:
        return data.expanduser()
    if os.environ.get("CAIRN_SERVER_DATA"):
        return Path(os.environ["CAIRN_SERVER_DATA"]).expanduser()
    home = os.environ.get("CAIRN_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cairn") / "server"


def open_storage(data: Path | None, db: str | None = None) -> ServerStorage:
    """PostgreSQL when ``db`` names one (a postgresql:// URL or a libpq "key=value" string),
    else the SQLite file under ``data_dir(data)``."""
    if db:
        from cairn.server.storage.postgres import PostgresStorage  # psycopg only when it is used

        return PostgresStorage(db)
    if data is not None and str(data).startswith(("postgresql://", "postgres://")):
        raise InvalidInput("--data is a folder; a PostgreSQL URL goes in --db")
    return SqliteStorage(data_dir(data) / DB_FILE)


def open_notifier(data: Path | None, db: str | None = None) -> Notifier:
    """How the processes serving the storage ``open_storage(data, db)`` wake each other's
    long-polls: LISTEN/NOTIFY on PostgreSQL (across hosts), else Unix datagram sockets beside
    the SQLite file (across the processes of one host)."""
    if db:
        from cairn.server.notify.postgres import PostgresNotifier  # psycopg only when used

        return PostgresNotifier(db)
    return UnixNotifier(data_dir(data) / NOTIFY_FOLDER)


def announce_keys_changed(data: Path | None, db: str | None, key_ids: list[str] | None) -> None:
    """Tell the server processes of ``open_storage(data, db)`` that these API keys changed
    (None: any may have), from a process that serves none (the CLI): their key caches drop
    them at once. Unreachable processes still drop them within their cache's TTL."""
    messages = [ALL_KEYS] if key_ids is None else [KEYS + key_id for key_id in key_ids]
    if db:
        from cairn.server.notify.postgres import announce_once  # psycopg only when used

        announce_once(db, messages)
        return
    tell_sockets(data_dir(data) / NOTIFY_FOLDER, messages)
