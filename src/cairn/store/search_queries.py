"""Reads that select live memories by filter or by text.

The filter SQL, listings and counts, keyword (FTS5) search, and the little that ranking needs
of each candidate."""

from __future__ import annotations

import math
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
    # rowid IN (...), not a correlated EXISTS: SQLite then reads the tag's rows from its index
    # and looks each memory up, where EXISTS had it scan every memory (counting a kind and a
    # tag at 100k on a busy machine: 1,855 ms before, 35 ms after).
    clause = "m.rowid IN (SELECT t.memory_rowid FROM memory_tags t WHERE t.tag = ?)"
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
"""A search term held by this share of the memories or more is common: it only ranks the rows
that a rare term of the query finds, never finds rows itself. Such a term's inverse document
frequency is low, yet FTS5 would score every row holding it (the cost of a keyword search grew
with those rows: ~19k per query at 100k memories), and its best rows alone are near-arbitrary,
which reciprocal rank fusion would weigh like any other list (bench/bench_recall.py)."""
RARE_FLOOR = 20
"""A term in fewer memories than this is never common (small stores search every term)."""
BM25_K1, BM25_B = 1.2, 0.75
"""FTS5's own BM25 parameters."""
SCORE_STEP = 256
"""Rows whose lengths a keyword search reads at a time, heaviest first, until no later row can
enter its top."""


class KeywordSearch:
    """Keyword search that finds rows by the query's rare terms and ranks them by BM25 over all
    its terms, each counted once per row (short memories rarely repeat a term).

    FTS5's ``bm25()`` is not used: before the first row it walks every phrase's whole doclist
    to count it, which for a phrase of common words ("chat-service") cost more than all else.
    Here rare terms are read as row lists (bounded walks), and a common term as the rows among
    those that hold it. Common terms' counts are remembered with the store's change counter
    (``seq``): one change alters a count by at most one, so a remembered count is used only
    while it sits further above the bound than the changes made since (and within a quarter of
    itself, for its weight); otherwise the term is counted again. Use under the database's lock.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._common: dict[str, tuple[int, int]] = {}  # term -> (count, seq counted at)

    def search(
        self, conn: sqlite3.Connection, terms: Sequence[str], filters: Filters, limit: int
    ) -> list[tuple[int, float]]:
        """(rowid, BM25 score) of the best live rows for ``terms`` (space-separated tokens)
        that match ``filters``, best first; none when every term is common."""
        top, seq = conn.execute(
            "SELECT (SELECT coalesce(max(rowid), 0) FROM memories), "
            "(SELECT coalesce(max(seq), 0) FROM memories)"
        ).fetchone()
        total = max(int(top), 1)  # rowids count tombstones too: near enough for a weight
        bound = max(RARE_FLOOR, int(total * RARE_SHARE))
        weights: dict[int, float] = {}
        rare: list[str] = []
        common: list[tuple[str, int]] = []
        for term in terms:
            count = self._common_count(term, bound, seq)
            if count is None:
                rows = _rows_holding(conn, phrase(term), bound)
                if len(rows) < bound:
                    rare.append(term)
                    idf = _idf(total, len(rows))
                    for rowid in rows:
                        weights[rowid] = weights.get(rowid, 0.0) + idf
                    continue
                count = self._count(conn, term, seq)
            common.append((term, count))
        if not weights:
            return []
        found = " OR ".join(phrase(term) for term in rare)
        for term, count in common:
            idf = _idf(total, count)
            for rowid in _rows_holding(conn, f"({found}) AND {phrase(term)}", None):
                weights[rowid] += idf
        return _best(conn, weights, filters, limit)

    def _common_count(self, term: str, bound: int, seq: int) -> int | None:
        """The remembered count of a term still surely common, else None."""
        known = self._common.get(term)
        if known is None:
            return None
        count, at = known
        drift = abs(seq - at)
        return count if count - drift >= bound and drift * 4 <= count else None

    def _count(self, conn: sqlite3.Connection, term: str, seq: int) -> int:
        row = conn.execute(
            "SELECT count(*) FROM memories_fts WHERE memories_fts MATCH ?", (phrase(term),)
        ).fetchone()
        if term not in self._common and len(self._common) >= self._size:
            self._common.pop(next(iter(self._common)))  # the oldest entry
        self._common[term] = (int(row[0]), seq)
        return int(row[0])


def _idf(total: int, count: int) -> float:
    """BM25's inverse document frequency, as FTS5 computes it (never below a tiny positive)."""
    return max(1e-6, math.log((total - count + 0.5) / (count + 0.5)))


def _rows_holding(conn: sqlite3.Connection, match: str, limit: int | None) -> list[int]:
    sql = "SELECT rowid FROM memories_fts WHERE memories_fts MATCH ?"
    args: list[Any] = [match]
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return [r[0] for r in conn.execute(sql, args)]


def _best(
    conn: sqlite3.Connection, weights: dict[int, float], filters: Filters, limit: int
) -> list[tuple[int, float]]:
    """The ``limit`` best by BM25 of the rows ``weights`` holds (summed inverse document
    frequencies) that match ``filters``, best first.

    BM25's length factor is at most ``MAX_FACTOR`` (a row of no length), so rows are scored in
    order of weight and the walk stops once the next weight, so raised, cannot reach the
    ``limit``-th score: a search reads the lengths of rows near its top only. Rows the keyword
    index holds are live (tombstones are not indexed), so only a filter needs the rows."""
    mean = _mean_tokens(conn)
    rowids = np.fromiter(weights, dtype=np.int64, count=len(weights))
    summed = np.fromiter(weights.values(), dtype=np.float64, count=len(weights))
    order = np.lexsort((-rowids, -summed))  # heaviest first; ties: the newer row first
    best: list[tuple[int, float]] = []
    step = max(limit * 2, SCORE_STEP)
    for start in range(0, len(order), step):
        chunk = order[start : start + step]
        if len(best) >= limit and summed[chunk[0]] * MAX_FACTOR < best[-1][1]:
            break
        lengths = _token_counts(conn, [int(rowids[i]) for i in chunk])
        if not filters.empty:
            kept = _matching(conn, list(lengths), filters)
            lengths = {rowid: n for rowid, n in lengths.items() if rowid in kept}
        best.extend(
            (rowid, float(summed[i]) * _length_factor(lengths[rowid], mean))
            for i in chunk
            if (rowid := int(rowids[i])) in lengths
        )
        best.sort(key=lambda r: (-r[1], -r[0]))
        del best[limit:]
    return best


BM25_K1_B = BM25_K1 * (1 - BM25_B)
MAX_FACTOR = (BM25_K1 + 1) / (1 + BM25_K1_B)
"""BM25's length factor for a row of no length: no row scores above its weight times this."""


def _length_factor(tokens: int, mean: float) -> float:
    return (BM25_K1 + 1) / (1 + BM25_K1_B + BM25_K1 * BM25_B * tokens / mean)


def _mean_tokens(conn: sqlite3.Connection) -> float:
    """The mean tokens per indexed row, from FTS5's own totals (its ``averages`` record)."""
    row = conn.execute("SELECT block FROM memories_fts_data WHERE id = 1").fetchone()
    values = _varints(bytes(row[0])) if row is not None else []
    return max(values[1] / values[0], 1.0) if len(values) >= 2 and values[0] > 0 else 1.0


def _token_counts(conn: sqlite3.Connection, rowids: list[int]) -> dict[int, int]:
    """rowid -> tokens FTS5 indexed of each of ``rowids`` (its ``docsize`` table: a few bytes a
    row, where reading ``length(content)`` read each memory's whole row)."""
    rows = conn.execute(
        f"SELECT id, sz FROM memories_fts_docsize WHERE id IN ({','.join('?' * len(rowids))})",
        rowids,
    )
    return {int(r[0]): max((_varints(bytes(r[1])) or [1])[0], 1) for r in rows}


def _varints(blob: bytes) -> list[int]:
    """The varints (SQLite's encoding, as FTS5 writes its records) that ``blob`` holds."""
    values: list[int] = []
    value = 0
    for byte in blob:
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            values.append(value)
            value = 0
    return values


def _matching(conn: sqlite3.Connection, rowids: list[int], filters: Filters) -> set[int]:
    """Those of ``rowids`` that are live and match ``filters``."""
    where, params = filter_sql(filters)
    rows = conn.execute(
        f"SELECT m.rowid FROM memories m WHERE {where} "
        f"AND m.rowid IN ({','.join('?' * len(rowids))})",
        [*params, *rowids],
    )
    return {int(r[0]) for r in rows}


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


def per_day(
    conn: sqlite3.Connection, by: str, since_ms: int, filters: Filters
) -> list[tuple[str, str, int]]:
    """Live memories created since ``since_ms`` per UTC day and ``by`` (``kind`` or
    ``project``): ``(YYYY-MM-DD, value, count)`` rows, oldest day first."""
    if by not in ("kind", "project"):
        raise ValueError(f"per_day groups by kind or project, not {by!r}")
    where, params = filter_sql(Filters(filters.project, filters.kinds, filters.tags, since_ms))
    rows = conn.execute(
        f"SELECT date(m.created_at / 1000, 'unixepoch') AS day, m.{by}, count(*) "
        "FROM memories m "
        f"WHERE {where} GROUP BY day, m.{by} ORDER BY day",
        params,
    ).fetchall()
    return [(day, value, n) for day, value, n in rows]
