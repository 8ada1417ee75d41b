"""The device's identity and its hybrid logical clock, persisted in the store's meta table."""

from __future__ import annotations

import sqlite3
import time

from cairn.hlc import HLC, observe, tick
from cairn.ids import new_device_id


def now_ms() -> int:
    return int(time.time() * 1000)


def device_id(conn: sqlite3.Connection) -> str:
    """This store's device id, made on first use (call inside a write transaction)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'device_id'").fetchone()
    if row:
        return str(row[0])
    value = new_device_id()
    conn.execute("INSERT INTO meta(key, value) VALUES ('device_id', ?)", (value,))
    return value


def next_hlc(conn: sqlite3.Connection) -> HLC:
    """A fresh clock value for a local change; must run inside the change's transaction."""
    return next_hlcs(conn, 1)[0]


def next_hlcs(conn: sqlite3.Connection, count: int) -> list[HLC]:
    """``count`` fresh clock values, in order, for local changes made in one transaction (as
    ``count`` calls of ``next_hlc`` give, with one read and one write of the stored clock)."""
    values, last = [], _last(conn)
    for _ in range(count):
        last = tick(last, now_ms())
        values.append(last)
    if values:
        _save(conn, last)
    return values


def observe_hlc(conn: sqlite3.Connection, remote: str) -> None:
    """Advance this device's clock past a clock seen from another device."""
    _save(conn, observe(_last(conn), HLC.unpack(remote), now_ms()))


def _last(conn: sqlite3.Connection) -> HLC:
    row = conn.execute("SELECT value FROM meta WHERE key = 'hlc'").fetchone()
    return HLC.unpack(row[0]) if row else HLC(0, 0, device_id(conn))


def _save(conn: sqlite3.Connection, value: HLC) -> HLC:
    conn.execute(
        "INSERT INTO meta(key, value) VALUES ('hlc', ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (value.pack(),),
    )
    return value
