"""BM25 keyword ranking on PostgreSQL: the term statistics a fold keeps, and the ranking query.

``ts_rank_cd`` has no inverse document frequency: a memory holding a word every memory holds
ranks like one holding the one rare word of the query. Devices rank with FTS5's BM25, so hosted
recall computes the same formula in SQL from statistics the fold keeps in step with the rows:
how many live memories of the workspace hold each term (``hosted_terms``), how many live
memories there are and how many tokens they hold (``hosted_index.docs``, ``.tokens``), and each
memory's token count (``hosted_memories.length``). Each memory's tsvector gives a term's
frequency in it (its positions).
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

_COUNT = (
    "INSERT INTO hosted_terms (workspace_id, term, docs) "
    "SELECT m.workspace_id, u.lexeme, {sign} count(*) "
    "FROM hosted_memories m CROSS JOIN LATERAL unnest(m.words) u "
    "WHERE m.workspace_id = ? AND m.id = ANY(?) GROUP BY m.workspace_id, u.lexeme "
    "ON CONFLICT (workspace_id, term) DO UPDATE SET docs = hosted_terms.docs + excluded.docs"
)
_TOTALS = (
    "UPDATE hosted_index i SET docs = i.docs {sign} t.docs, tokens = i.tokens {sign} t.tokens "
    "FROM (SELECT count(*) FILTER (WHERE NOT deleted) AS docs, coalesce(sum(length), 0) AS "
    "tokens FROM hosted_memories WHERE workspace_id = ? AND id = ANY(?)) t "
    "WHERE i.workspace_id = ?"
)


def count_terms(conn: Conn, workspace_id: str, memory_ids: Sequence[str], sign: int) -> None:
    """Add (``sign`` 1) or take away (-1) these memories' rows as they stand now from their
    workspace's term statistics: a fold takes the old rows away, writes, and adds the new ones.
    A forgotten memory holds no terms and no tokens, so it counts for nothing."""
    marker = "+" if sign > 0 else "-"
    conn.execute(_COUNT.format(sign=marker), (workspace_id, list(memory_ids)))
    conn.execute(_TOTALS.format(sign=marker), (workspace_id, list(memory_ids), workspace_id))
    if sign < 0:
        return
    conn.execute("DELETE FROM hosted_terms WHERE workspace_id = ? AND docs <= 0", (workspace_id,))


def tsquery(terms: Sequence[Sequence[str]]) -> str:
    """The tsquery text matching any of ``terms`` (each a phrase of word-character tokens)."""
    return " | ".join(
        "(" + " <-> ".join(f"'{token}'" for token in tokens) + ")" for tokens in terms if tokens
    )


def ranking_sql(where: str) -> str:
    """The SELECT of (id, BM25 score) best first, for the parameters: the workspace id, the
    query's words (one text), the workspace id, the tsquery text, the workspace id, ``where``'s
    and how many.

    A phrase counts as its terms, each with its own frequency and rarity (FTS5 scores the
    phrase as one term); the query's stemmed terms come from the same configuration as the
    memories'. IDF as FTS5 computes it: ln((N - n + 0.5) / (n + 0.5)), at least 1e-6."""
    return f"""
        WITH s AS (
            SELECT docs::float8 AS n, greatest(tokens, 1)::float8 / greatest(docs, 1) AS avgdl
            FROM hosted_index WHERE workspace_id = ?
        ), q AS (
            SELECT t.term, greatest(ln((s.n - coalesce(h.docs, 0) + 0.5)
                                       / (coalesce(h.docs, 0) + 0.5)), 1e-6) AS idf
            FROM s CROSS JOIN unnest(tsvector_to_array(to_tsvector('english'::regconfig, ?)))
                AS t(term)
            LEFT JOIN hosted_terms h ON h.workspace_id = ? AND h.term = t.term
        )
        SELECT m.id, sum(q.idf * cardinality(u.positions) * {K1 + 1}
                         / (cardinality(u.positions)
                            + {K1} * ({1 - B} + {B} * m.length / s.avgdl))) AS rank
        FROM s, to_tsquery('english'::regconfig, ?) tq, hosted_memories m
        CROSS JOIN LATERAL unnest(m.words) u JOIN q ON q.term = u.lexeme
        WHERE m.workspace_id = ? AND m.words @@ tq AND {where}
        GROUP BY m.id ORDER BY rank DESC, m.id LIMIT ?"""
