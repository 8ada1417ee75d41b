"""The sync lease: which process on this device may sync the store right now.

One row (in ``meta``) names the owner and when its claim runs out. Taking, renewing and
releasing it happen inside the caller's write transaction (``BEGIN IMMEDIATE``), so two
processes can never both believe they hold it; an owner that crashed stops renewing, and the
lease passes to the next process that asks once it has expired.

A process that does not hold the lease asks the holder for a sync round instead of syncing
itself: ``ask`` bumps a counter the holder watches (``asked``); the holder records which
request its round answered.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from cairn.store.replica import get_meta, set_meta

KEY = "sync.lease"
ASKED = "sync.asked"


@dataclass(frozen=True)
class Lease:
    owner: str
    expires_at: int  # unix ms


def holder(conn: sqlite3.Connection, now: int) -> Lease | None:
    """The live lease, or None when nobody holds one (or it expired)."""
    raw = get_meta(conn, KEY)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        lease = Lease(str(data["owner"]), int(data["expires_at"]))
    except (ValueError, KeyError, TypeError):
        return None  # a damaged row is no claim
    return lease if lease.expires_at > now else None


def acquire(conn: sqlite3.Connection, owner: str, now: int, ttl_ms: int) -> bool:
    """Take or renew the lease for ``owner``; False when another live owner holds it."""
    current = holder(conn, now)
    if current is not None and current.owner != owner:
        return False
    set_meta(conn, KEY, json.dumps({"owner": owner, "expires_at": now + ttl_ms}))
    return True


def release(conn: sqlite3.Connection, owner: str) -> None:
    """Give the lease up, if ``owner`` holds it."""
    current = holder(conn, 0)
    if current is not None and current.owner == owner:
        set_meta(conn, KEY, None)


def ask(conn: sqlite3.Connection) -> int:
    """Ask the lease holder for a sync round; returns this request's number."""
    number = asked(conn) + 1
    set_meta(conn, ASKED, str(number))
    return number


def asked(conn: sqlite3.Connection) -> int:
    """The number of the latest request for a sync round (0: none yet)."""
    raw = get_meta(conn, ASKED)
    return int(raw) if raw and raw.isdigit() else 0
