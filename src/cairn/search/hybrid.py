"""Hybrid recall: semantic (vector) and keyword (FTS5 BM25) candidates fused by reciprocal rank.

After fusion: superseded memories drop below their successors, and a small recency term breaks
near-ties in favour of newer memories.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Executor
from typing import TypeVar
from weakref import WeakKeyDictionary

import numpy as np
import numpy.typing as npt

from cairn.model import Filters, Hit, Match
from cairn.search.vector_index import VectorIndex
from cairn.store import memories, relations, search_queries
from cairn.store.clock import now_ms
from cairn.store.db import Database

RRF_K = 60
"""Reciprocal rank fusion constant (Cormack et al. 2009)."""
MIN_COSINE = 0.1
"""Semantic candidates below this cosine are noise for MiniLM-class models and are dropped."""
SUPERSEDED_FACTOR = 0.5
RECENCY_WEIGHT = 0.05
RECENCY_HALF_LIFE_DAYS = 30.0

_STOPWORDS = frozenset(
    "a an and are as at be but by do does did for from has have how i if in into is it its "
    "me my no not of on or our so that the their them then there these they this to was we "
    "were what when where which who why will with you your can should would could about".split()
)
_TOKEN = re.compile(r"\w+", re.UNICODE)
K = TypeVar("K", bound=Hashable)


def query_terms(text: str) -> list[tuple[str, ...]]:
    """The query's distinct search terms, stop words dropped: each a phrase of tokens.

    A word made of several tokens (``onboarding-proxy``, ``pnpm-lock.yaml``, ``docs/oncall.md``)
    becomes a phrase, so it matches those tokens side by side rather than each one anywhere:
    more precise, and far fewer rows for BM25 to score. Tokens are word characters only.
    """
    seen: dict[tuple[str, ...], None] = {}
    for word in text.lower().split():
        tokens = tuple(t for t in _TOKEN.findall(word) if t.strip("_"))
        if len(tokens) > 1 or (tokens and tokens[0] not in _STOPWORDS):
            seen.setdefault(tokens, None)
    return list(seen)


def depth(limit: int) -> int:
    """How many candidates each side of a recall of ``limit`` memories gathers before fusion."""
    return max(limit * 4, 50)


def meaningful(nearest: Sequence[tuple[K, float]]) -> list[tuple[K, float]]:
    """The semantic candidates worth fusing: those at ``MIN_COSINE`` or closer."""
    return [(key, cosine) for key, cosine in nearest if cosine >= MIN_COSINE]


def fts_query(text: str) -> str | None:
    """An FTS5 MATCH expression: the query's terms (``query_terms``) as phrases, OR-ed."""
    return " OR ".join('"' + " ".join(tokens) + '"' for tokens in query_terms(text)) or None


def fuse(
    semantic: Sequence[tuple[K, float]],
    keyword: Sequence[tuple[K, float]],
    about: Mapping[K, tuple[str, int]],
    successors: Mapping[str, str],
    now: int,
    limit: int | None = None,
) -> list[tuple[float, str, K, Match]]:
    """Both rankings fused by reciprocal rank, best first, as (score, memory id, key, match);
    the best ``limit`` of them when given.

    ``about`` gives each candidate's memory id and created_at (a candidate missing from it
    is gone and left out); ``successors`` maps a superseded memory id to its successor's.
    """
    fused: dict[K, float] = {}
    for ranked in (semantic, keyword):
        for rank, (key, _score) in enumerate(ranked, 1):
            fused[key] = fused.get(key, 0.0) + 1.0 / (RRF_K + rank)
    per_day = math.log(2) / RECENCY_HALF_LIFE_DAYS
    scored: list[tuple[float, str, K]] = []
    for key, (memory_id, created_at) in about.items():
        base = fused.get(key)
        if base is None:
            continue
        age_days = max(0.0, (now - created_at) / 86_400_000)
        score = base * (1.0 + RECENCY_WEIGHT * math.exp(-age_days * per_day))
        if memory_id in successors:
            score *= SUPERSEDED_FACTOR
        scored.append((score, memory_id, key))
    scored.sort(key=lambda t: (-t[0], t[1]))
    sem = {k: (i, c) for i, (k, c) in enumerate(semantic, 1)}
    kw = {k: (i, s) for i, (k, s) in enumerate(keyword, 1)}
    top = []
    for score, memory_id, key in scored[:limit]:  # Match only for what is returned
        s_rank, cosine = sem.get(key, (None, None))
        k_rank, bm25 = kw.get(key, (None, None))
        match = Match(s_rank, cosine, k_rank, bm25, successors.get(memory_id))
        top.append((score, memory_id, key, match))
    return top


def recall(
    db: Database,
    index: VectorIndex,
    embed: Callable[[str], npt.NDArray[np.float32]],
    query: str,
    filters: Filters,
    limit: int,
    pool: Executor,
) -> list[Hit]:
    """The best ``limit`` memories for ``query``.

    The keyword search runs on ``pool`` while this thread embeds the query and scans the
    vectors: SQLite and numpy both release the GIL, so on two cores the two sides overlap.
    """
    gather = depth(limit)
    index.refresh()
    allowed = None
    project_only = filters == Filters(project=filters.project)
    if not filters.empty and not project_only:
        with db.read() as conn:
            allowed = search_queries.filtered_rowids(conn, filters)
    terms = [" ".join(tokens) for tokens in query_terms(query)]
    pending = pool.submit(keyword_ranked, db, terms, filters, gather) if terms else None
    project = filters.project if project_only else None  # the index filters projects itself
    semantic = meaningful(index.search(embed(query), gather, allowed, project))
    keyword = pending.result() if pending else []
    candidates = [r for r, _ in semantic] + [r for r, _ in keyword]
    if not candidates:
        return []
    with db.read() as conn:
        brief = search_queries.briefs(conn, candidates)  # a row may be gone since the searches
        successors = relations.successors(conn, [memory_id for memory_id, _ in brief.values()])
    top = fuse(semantic, keyword, brief, successors, now_ms(), limit)
    with db.read() as conn:
        found = memories.by_rowids(conn, [rowid for _s, _id, rowid, _m in top])
    hits = [
        Hit(found[rowid], score, match)
        for score, _id, rowid, match in top
        if rowid in found and not found[rowid].deleted
    ]
    return successors_first(hits)


_KEYWORD: WeakKeyDictionary[Database, search_queries.KeywordSearch] = WeakKeyDictionary()


def keyword_ranked(
    db: Database, terms: Sequence[str], filters: Filters, depth: int
) -> list[tuple[int, float]]:
    """The best ``depth`` keyword matches for ``terms`` (``search_queries.KeywordSearch``):
    found by the rare terms, ranked by all; none when every term is common, leaving the
    ranking to the semantic side."""
    with db.read() as conn:
        search = _KEYWORD.setdefault(db, search_queries.KeywordSearch())
        return search.search(conn, terms, filters, depth)


def successors_first(hits: list[Hit]) -> list[Hit]:
    """Hold back each superseded hit until its successor (when also listed) has been placed."""
    listed = {h.memory.id for h in hits}
    waiting: dict[str, list[Hit]] = {}
    ordered: list[Hit] = []
    placed: set[str] = set()

    def place(hit: Hit) -> None:
        ordered.append(hit)
        placed.add(hit.memory.id)
        for held in waiting.pop(hit.memory.id, []):
            place(held)

    for hit in hits:
        successor = hit.match.superseded_by
        if successor in listed and successor not in placed:
            waiting.setdefault(successor, []).append(hit)
        else:
            place(hit)
    # A supersession cycle (possible after concurrent edits) must not hide its members.
    ordered.extend(h for held in waiting.values() for h in held)
    return ordered
