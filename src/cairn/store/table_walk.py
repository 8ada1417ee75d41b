"""Reading a SQLite table row by row in key order, seeking past pages that cannot be read.

SQLite raises on a damaged page and the rows on it are lost, but the rest of a b-tree can still
be reached by seeking past the damage. ``walk`` reads a table in key order a page of rows at a
time; when a read raises it narrows down to the row that cannot be read, then probes further
keys until the walk can go on.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any

PAGE = 256
"""Rows read per query while the walk meets no damage."""
_LOWEST_INT = -(2**63)
_HIGHEST_INT = 2**63 - 1

Key = tuple[Any, ...]


def read_one(conn: sqlite3.Connection, sql: str, *params: Any) -> Any:
    """The first row ``sql`` selects, or None when it cannot be read."""
    try:
        return conn.execute(sql, params).fetchone()
    except sqlite3.DatabaseError:
        return None


def walk(conn: sqlite3.Connection, select: str, keys: Sequence[str]) -> Iterator[tuple[Any, ...]]:
    """The rows of ``select`` (whose first columns are ``keys``) in key order, skipping what
    cannot be read.

    The first key column must be an INTEGER (rowid-like) or a TEXT column. A row-value
    comparison on the keys seeks straight to where the walk left off, so SQLite reads only the
    pages on the way there.
    """
    width = len(keys)
    order = ", ".join(keys)
    sql = f"{select} WHERE ({order}) > ({', '.join('?' * width)}) ORDER BY {order} LIMIT ?"

    def fetch(after: Key, limit: int) -> list[tuple[Any, ...]]:
        return conn.execute(sql, (*after, limit)).fetchall()

    after: Key | None = None
    limit = PAGE
    while True:
        start = after if after is not None else _lowest(keys)
        try:
            rows = fetch(start, limit)
        except sqlite3.DatabaseError:
            if limit > 1:  # narrow down to the first row that cannot be read
                limit = max(1, limit // 4)
                continue
            after = _past_damage(fetch, start)
            if after is None:
                return
            continue
        if not rows:
            return
        yield from rows
        after = tuple(rows[-1][:width])
        limit = PAGE


def _lowest(keys: Sequence[str]) -> Key:
    """A key below every row: the lowest integer, or the empty text, per key column."""
    return tuple(_LOWEST_INT if k in _INTEGER_KEYS else "" for k in keys)


_INTEGER_KEYS = frozenset({"rowid", "memory_rowid", "seq"})


def _past_damage(fetch: Callable[[Key, int], list[tuple[Any, ...]]], after: Key) -> Key | None:
    """A key beyond the damage that follows ``after``, from which reading works again (None:
    nothing further can be read). Rows between the two are lost."""

    def readable(key: Key) -> bool:
        try:
            fetch(key, 1)
        except sqlite3.DatabaseError:
            return False
        return True

    first, rest = after[0], tuple(_LOWEST_INT if isinstance(v, int) else "" for v in after[1:])
    if isinstance(first, int):
        base = max(first, 0)
        step = 0
        while base + step <= _HIGHEST_INT:
            if readable((base + step, *rest)):
                break
            step = step * 2 if step else 1
        else:
            return None
        low, high = base + step // 2, base + step  # low is unreadable (or the start), high reads
        while high - low > 1:
            middle = (low + high) // 2
            if readable((middle, *rest)):
                high = middle
            else:
                low = middle
        return (high, *rest)
    text = str(first)
    # Trigger: damage right after ``text``. Outcome: the smallest jump first (the last
    # character one up), then larger ones; from the empty text (damage at the very start),
    # each printable first character in turn. Rows skipped over are lost.
    candidates = [
        text[:i] + chr(ord(text[i]) + 1)
        for i in range(len(text) - 1, -1, -1)
        if ord(text[i]) < 0x10FFFF
    ]
    candidates += [chr(c) for c in range(0x21, 0x7F) if chr(c) > text[:1]]
    found = next((c for c in candidates if c > text and readable((c, *rest))), None)
    if found is None:
        return None
    # The jump may have passed readable rows: bisect back to the first key that reads, with
    # keys as numbers of _WIDTH base-128 digits (ids and tags are ASCII).
    low, high = _as_number(text), _as_number(found)
    while high - low > 1:
        middle = (low + high) // 2
        if readable((_as_text(middle), *rest)):
            high = middle
        else:
            low = middle
    best = _as_text(high)
    return (best if text < best <= found else found, *rest)


_WIDTH = 48


def _as_number(text: str) -> int:
    number = 0
    for char in text[:_WIDTH].ljust(_WIDTH, "\0"):
        number = number * 128 + min(ord(char), 127)
    return number


def _as_text(number: int) -> str:
    chars = []
    for _ in range(_WIDTH):
        number, digit = divmod(number, 128)
        chars.append(chr(digit))
    return "".join(reversed(chars)).rstrip("\0")
