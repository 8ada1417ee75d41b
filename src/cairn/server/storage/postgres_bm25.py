"""BM25 keyword ranking on PostgreSQL: the postings and term statistics folds keep, and the query.

``ts_rank_cd`` has no inverse document frequency: a memory holding a word every memory holds
ranks like one holding the one rare word of the query. Devices rank with FTS5's BM25, so hosted
recall computes the same formula in SQL from what the fold keeps in step with the rows: each
live memory's terms with their frequency and the memory's token count (``hosted_postings``),
how many live memories hold each term (``hosted_terms``), and how many live memories there are
and how many tokens they hold (``hosted_index.docs``, ``.tokens``).

Why postings, not the tsvector's GIN index: under row-level security PostgreSQL uses an index
only for leakproof operators, and ``@@`` is not one, so every keyword search read every row of
the workspace. The postings' primary key is read by ``=`` on text, which is leakproof.
"""

from __future__ import annotations

from collections.abc import Sequence

from cairn.server.storage.dialect import Conn

K1 = 1.2
B = 0.75
"""FTS5's BM25 constants (its ``bm25()`` defaults), so hosted and device rankings agree."""

WORDS = "to_tsvector('english'::regconfig, regexp_replace(content, '\\W+', ' ', 'g'))"
"""A memory's terms: its word-character runs (as FTS5's tokenizer splits them, so a file name
``pnpm-lock.yaml`` is three terms, not one), stemmed, English stop words left out."""

_WORDS = (
    "WITH w AS MATERIALIZED (SELECT m.id, m.length, u.lexeme, cardinality(u.positions) AS tf "
    "FROM hosted_memories m CROSS JOIN LATERAL unnest(m.words) u "
    "WHERE m.workspace_id = ? AND m.id = ANY(?)), "
    "d AS (SELECT lexeme, count(*) AS n FROM w GROUP BY lexeme), "
    "totals AS (UPDATE hosted_index i SET docs = i.docs {sign} t.docs, "
    "tokens = i.tokens {sign} t.tokens FROM (SELECT count(*) FILTER (WHERE NOT deleted) AS docs, "
    "coalesce(sum(length), 0) AS tokens FROM hosted_memories WHERE workspace_id = ? "
    "AND id = ANY(?)) t WHERE i.workspace_id = ?) "
)
_REMOVE = _WORDS.format(sign="-") + (
    ", unpost AS (DELETE FROM hosted_postings p USING w WHERE p.workspace_id = ? "
    "AND p.term = w.lexeme AND p.id = w.id), "
    "fewer AS (UPDATE hosted_terms h SET docs = h.docs - d.n FROM d WHERE h.workspace_id = ? "
    "AND h.term = d.lexeme AND h.docs > d.n) "
    "DELETE FROM hosted_terms h USING d WHERE h.workspace_id = ? AND h.term = d.lexeme "
    "AND h.docs <= d.n"
)
_ADD = _WORDS.format(sign="+") + (
    # In key order: neighbouring postings land in the same index pages.
    ", post AS (INSERT INTO hosted_postings (workspace_id, term, id, tf, length) "
    "SELECT ?, lexeme, id, tf, length FROM w ORDER BY lexeme, id) "
    "INSERT INTO hosted_terms (workspace_id, term, docs) SELECT ?, lexeme, n FROM d "
    "ON CONFLICT (workspace_id, term) DO UPDATE SET docs = hosted_terms.docs + excluded.docs"
)


def count_terms(conn: Conn, workspace_id: str, memory_ids: Sequence[str], sign: int) -> None:
    """Add (``sign`` 1) or take away (-1) these memories' rows as they stand now from their
    workspace's postings and statistics: a fold takes the old rows away, writes, and adds the
    new ones. A forgotten memory holds no terms and no tokens, so it counts for nothing.

    One statement each way (its parts touch different rows, so they cannot see one another's
    changes): a term no memory holds any more is deleted, not left at 0."""
    ids = list(memory_ids)
    head = (workspace_id, ids, workspace_id, ids, workspace_id)
    if sign < 0:
        conn.execute(_REMOVE, (*head, workspace_id, workspace_id, workspace_id))
    else:
        conn.execute(_ADD, (*head, workspace_id, workspace_id))


def ranking_sql(where: str | None) -> str:
    """The SELECT of (id, BM25 score) best first, for the parameters: the workspace id, the
    query's terms (a text[], each a phrase of tokens joined by spaces), the workspace id twice,
    ``where``'s (``None``: no filter beyond live memories, which postings alone are) and how
    many.

    A memory matches a phrase when it holds every one of its words (FTS5 also wants them side
    by side) and then scores each of them, with its own frequency and rarity (FTS5 scores the
    phrase as one term). IDF as FTS5 computes it: ln((N - n + 0.5) / (n + 0.5)), at least
    1e-6."""
    filtered = (
        f"JOIN hosted_memories m ON m.workspace_id = p.workspace_id AND m.id = p.id AND {where}"
        if where is not None
        else ""
    )
    return f"""
        WITH s AS (
            SELECT docs::float8 AS n, greatest(tokens, 1)::float8 / greatest(docs, 1) AS avgdl
            FROM hosted_index WHERE workspace_id = ?
        ), q AS MATERIALIZED (
            SELECT ph.no, l.term, count(*) OVER (PARTITION BY ph.no) AS size,
                   greatest(ln((s.n - coalesce(h.docs, 0) + 0.5)
                               / (coalesce(h.docs, 0) + 0.5)), 1e-6) AS idf
            FROM s CROSS JOIN unnest(?::text[]) WITH ORDINALITY AS ph(phrase, no)
            CROSS JOIN LATERAL unnest(tsvector_to_array(
                to_tsvector('english'::regconfig, ph.phrase))) AS l(term)
            LEFT JOIN hosted_terms h ON h.workspace_id = ? AND h.term = l.term
        ), scored AS (
            SELECT p.id, q.no, count(*) AS held, max(q.size) AS size,
                   sum(q.idf * p.tf * {K1 + 1}::float8
                       / (p.tf + {K1}::float8 * ({1 - B}::float8
                                                 + {B}::float8 * p.length / s.avgdl))) AS part
            FROM s, q JOIN hosted_postings p ON p.workspace_id = ? AND p.term = q.term
            {filtered}
            GROUP BY p.id, q.no
        )
        SELECT id, sum(part) AS rank FROM scored WHERE held = size
        GROUP BY id ORDER BY rank DESC, id LIMIT ?"""
