"""Reads that select live memories by filter or by text.

The filter SQL, listings and counts, keyword (FTS5) search, and the little that ranking needs
of each candidate."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from cairn.model import Filters, Memory
from cairn.store import outbox
from cairn.store.memories import COLUMNS, build_memories, fetch, rows_in, tags_for

Clauses = tuple[list[str], list[Any]]


def _in_list(column: str, values: Sequence[str]) -> tuple[str, list[Any]]:
    return f"{column} IN ({','.join('?' * len(values))})", list(values)


def _tag_rows(tags: Sequence[str]) -> Clauses:
    clause = "EXISTS (SELECT 1 FROM memory_tags t WHERE t.memory_rowid = m.rowid AND t.tag = ?)"
    return [clause] * len(tags), list(tags)


def filter_sql(
    filters: Filters,
    live: str = "m.deleted = 0",
    in_list: Callable[[str, Sequence[str]], tuple[str, list[Any]]] = _in_list,
    tags: Callable[[Sequence[str]], Clauses] = _tag_rows,
) -> tuple[str, list[Any]]:
    """The WHERE clause (over ``memories m``) and its values that select live memories matching
    ``filters``; the hosted index (``hosted_memories m``) passes its own ``live`` test, list
    and tag clauses, so the filter rules are written once."""
    clauses = [live]
    params: list[Any] = []
    if filters.project is not None:
        clauses.append("m.project = ?")
        params.append(filters.project)
    if filters.kinds:
        clause, values = in_list("m.kind", filters.kinds)
        clauses.append(clause)
        params.extend(values)
    if filters.since_ms is not None:
        clauses.append("m.created_at >= ?")
        params.append(filters.since_ms)
    if filters.until_ms is not None:
        clauses.append("m.created_at < ?")
        params.append(filters.until_ms)
    tag_clauses, tag_values = tags(filters.tags)
    clauses.extend(tag_clauses)
    params.extend(tag_values)
    return " AND ".join(clauses), params


def listing(
    conn: sqlite3.Connection, filters: Filters, limit: int, offset: int = 0
) -> list[Memory]:
    where, params = filter_sql(filters)
    return fetch(
        conn,
        f"{where} ORDER BY m.created_at DESC, m.id DESC LIMIT ? OFFSET ?",
        [*params, limit, offset],
    )


def count_live(conn: sqlite3.Connection, filters: Filters) -> int:
    where, params = filter_sql(filters)
    return int(conn.execute(f"SELECT count(*) FROM memories m WHERE {where}", params).fetchone()[0])


def filtered_rowids(conn: sqlite3.Connection, filters: Filters) -> npt.NDArray[np.int64]:
    where, params = filter_sql(filters)
    rows = conn.execute(f"SELECT m.rowid FROM memories m WHERE {where}", params).fetchall()
    return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))


RARE_SHARE = 0.005
"""A search term held by this share of the memories or more is common: its inverse document
frequency is low, BM25 must score every memory holding it (the cost of a keyword search grows
with those rows), and its best rows are near-arbitrary, which reciprocal rank fusion would weigh
like any other list. Measured by bench/bench_recall.py: keyword search only on rarer terms is
~10x faster at 100k memories and finds the paraphrased memory at least as often."""
RARE_FLOOR = 20
"""A term in fewer memories than this is never common (small stores search every term)."""


class TermCounts:
    """How many memories hold each search term, as far as telling rare terms from common ones.

    Counting stops at the bound, so a common term costs a bounded walk. Counts are remembered
    with the store's change counter (``seq``): one change alters a term's count by at most one,
    so a remembered count decides only while it sits further from the bound than the changes
    made since; otherwise the term is counted again. Use under the database's lock.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._known: dict[str, tuple[int, int, int]] = {}  # term -> (count, cap, seq)

    def rare(self, conn: sqlite3.Connection, terms: Sequence[str]) -> list[str]:
        """The ``terms`` (FTS5 phrases, without quotes) held by few enough memories."""
        top, seq = conn.execute(
            "SELECT (SELECT coalesce(max(rowid), 0) FROM memories), "
            "(SELECT coalesce(max(seq), 0) FROM memories)"
        ).fetchone()
        bound = max(RARE_FLOOR, int(top * RARE_SHARE))  # rowids count tombstones too: near enough
        return [term for term in terms if self._is_rare(conn, term, bound, seq)]

    def _is_rare(self, conn: sqlite3.Connection, term: str, bound: int, seq: int) -> bool:
        known = self._known.get(term)
        if known is not None:
            count, cap, at = known
            drift = abs(seq - at)
            if count - drift >= bound:
                return False
            if count < cap and count + drift < bound:
                return True
        count = int(
            conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM memories_fts WHERE memories_fts MATCH ? "
                "LIMIT ?)",
                (phrase(term), bound),
            ).fetchone()[0]
        )
        if term not in self._known and len(self._known) >= self._size:
            self._known.pop(next(iter(self._known)))  # the oldest entry
        self._known[term] = (count, bound, seq)
        return count < bound


def phrase(term: str) -> str:
    """An FTS5 phrase for ``term`` (tokens of word characters, space-separated)."""
    return f'"{term}"'


def keyword_search(
    conn: sqlite3.Connection, match: str, filters: Filters, limit: int
) -> list[tuple[int, float]]:
    """(rowid, bm25) of the best keyword matches, best first; bm25 positive, higher is better."""
    if filters.empty:  # tombstones are not indexed, so the FTS table alone answers
        rows = conn.execute(
            "SELECT rowid, rank FROM memories_fts WHERE memories_fts MATCH ? ORDER BY rank LIMIT ?",
            (match, limit),
        ).fetchall()
    else:
        where, params = filter_sql(filters)
        rows = conn.execute(
            "SELECT f.rowid, f.rank FROM memories_fts f JOIN memories m ON m.rowid = f.rowid "
            f"WHERE memories_fts MATCH ? AND {where} ORDER BY f.rank LIMIT ?",
            [match, *params, limit],
        ).fetchall()
    return [(int(r[0]), -float(r[1])) for r in rows]


def briefs(conn: sqlite3.Connection, rowids: Sequence[int]) -> dict[int, tuple[str, int]]:
    """rowid -> (id, created_at) of live memories: what ranking needs, without the content."""
    sql = "SELECT rowid, id, created_at FROM memories WHERE deleted = 0 AND rowid IN ({marks})"
    return {rowid: (memory_id, created) for rowid, memory_id, created in rows_in(conn, sql, rowids)}


def page_with_vectors(
    conn: sqlite3.Connection, filters: Filters, after_rowid: int, limit: int
) -> list[tuple[int, Memory, str | None, bytes | None]]:
    """(rowid, memory, model_id, vector) of live memories after ``after_rowid``, by rowid."""
    where, params = filter_sql(filters)
    rows = conn.execute(
        f"SELECT {COLUMNS}, v.model_id, v.vector FROM memories m LEFT JOIN memory_vectors v "
        f"ON v.memory_rowid = m.rowid WHERE {where} AND m.rowid > ? ORDER BY m.rowid LIMIT ?",
        [*params, after_rowid, limit],
    ).fetchall()
    built = build_memories([r[:13] for r in rows], tags_for(conn, [r[0] for r in rows]))
    return [(r[0], m, r[13], r[14]) for r, m in zip(rows, built, strict=True)]


def projects(conn: sqlite3.Connection) -> dict[str, int]:
    """Each project that holds live memories, with how many, by name."""
    rows = conn.execute(
        "SELECT project, count(*) FROM memories WHERE deleted = 0 GROUP BY project ORDER BY 1"
    )
    return {str(r[0]): int(r[1]) for r in rows}


def stats(conn: sqlite3.Connection) -> dict[str, Any]:
    """The store's counts: memories live and forgotten, by kind, project and model, and more."""
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE deleted = 0), count(*) FILTER (WHERE deleted = 1) "
        "FROM memories"
    ).fetchone()
    by_kind = dict(
        conn.execute(
            "SELECT kind, count(*) FROM memories WHERE deleted = 0 GROUP BY kind ORDER BY 2 DESC"
        ).fetchall()
    )
    by_project = dict(
        conn.execute(
            "SELECT project, count(*) FROM memories WHERE deleted = 0 GROUP BY project "
            "ORDER BY 2 DESC"
        ).fetchall()
    )
    by_model = dict(
        conn.execute("SELECT model_id, count(*) FROM memory_vectors GROUP BY model_id").fetchall()
    )
    return {
        "memories": row[0],
        "forgotten": row[1],
        "by_kind": by_kind,
        "by_project": by_project,
        "vectors_by_model": by_model,
        "relations": conn.execute("SELECT count(*) FROM relations").fetchone()[0],
        "outbox_pending": outbox.count(conn),
        "device_id": (
            conn.execute("SELECT value FROM meta WHERE key='device_id'").fetchone() or [None]
        )[0],
    }
