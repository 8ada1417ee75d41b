"""Hybrid recall: semantic (vector) and keyword (FTS5 BM25) candidates fused by reciprocal rank.

After fusion: superseded memories drop below their successors, and a small recency term breaks
near-ties in favour of newer memories.
"""

from __future__ import annotations

import math
import re

import numpy as np
import numpy.typing as npt

from cairn.model import Filters, Hit, Match
from cairn.search.vector_index import VectorIndex
from cairn.store import memories
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


def fts_query(text: str) -> str | None:
    """An FTS5 MATCH expression: the query's distinct non-stopword tokens, OR-ed and quoted."""
    seen: dict[str, None] = {}
    for token in _TOKEN.findall(text.lower()):
        if token not in _STOPWORDS and token.strip("_"):
            seen.setdefault(token, None)
    if not seen:
        return None
    return " OR ".join(f'"{t}"' for t in seen)


def recall(
    db: Database,
    index: VectorIndex,
    query_vector: npt.NDArray[np.float32] | None,
    query: str,
    filters: Filters,
    limit: int,
) -> list[Hit]:
    depth = max(limit * 4, 50)
    index.refresh()
    with db.read() as conn:
        allowed = None if filters.empty else memories.filtered_rowids(conn, filters)
        semantic = [] if query_vector is None else index.search(query_vector, depth, allowed)
        semantic = [(r, c) for r, c in semantic if c >= MIN_COSINE]
        match = fts_query(query)
        keyword = [] if match is None else memories.keyword_search(conn, match, filters, depth)
        fused: dict[int, float] = {}
        for rank, (rowid, _c) in enumerate(semantic, 1):
            fused[rowid] = fused.get(rowid, 0.0) + 1.0 / (RRF_K + rank)
        for rank, (rowid, _s) in enumerate(keyword, 1):
            fused[rowid] = fused.get(rowid, 0.0) + 1.0 / (RRF_K + rank)
        if not fused:
            return []
        found = memories.by_rowids(conn, list(fused))
        successors = memories.successors(conn, [m.id for m in found.values()])
    sem = {r: (i, c) for i, (r, c) in enumerate(semantic, 1)}
    kw = {r: (i, s) for i, (r, s) in enumerate(keyword, 1)}
    now = now_ms()
    hits = []
    for rowid, score in fused.items():
        memory = found.get(rowid)
        if memory is None or memory.deleted:  # changed under us between the two reads
            continue
        age_days = max(0.0, (now - memory.created_at) / 86_400_000)
        score *= 1.0 + RECENCY_WEIGHT * math.exp(-age_days * math.log(2) / RECENCY_HALF_LIFE_DAYS)
        successor = successors.get(memory.id)
        if successor is not None:
            score *= SUPERSEDED_FACTOR
        s_rank, cosine = sem.get(rowid, (None, None))
        k_rank, bm25 = kw.get(rowid, (None, None))
        hits.append(Hit(memory, score, Match(s_rank, cosine, k_rank, bm25, successor)))
    hits.sort(key=lambda h: (-h.score, h.memory.id))
    return _successors_first(hits)[:limit]


def _successors_first(hits: list[Hit]) -> list[Hit]:
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
