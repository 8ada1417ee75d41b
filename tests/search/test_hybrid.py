"""Hybrid recall behaviour: filters, supersession, explanations, forgotten memories."""

from __future__ import annotations

import time
from typing import Any

import pytest

from cairn.device_store import Store
from cairn.errors import InvalidInput
from cairn.memory_rules import NewMemory
from cairn.model import Filters, Hit, Match, Memory
from cairn.search.hybrid import fts_query, successors_first
from cairn.store import search_queries


def test_fts_query_drops_stopwords_and_quotes_tokens() -> None:
    assert (
        fts_query("How do we use the ERR_CONN_RESET flag?") == '"use" OR "err_conn_reset" OR "flag"'
    )
    assert fts_query("what is it") is None


def test_fts_query_keeps_compound_words_together() -> None:
    assert fts_query("flaky onboarding-proxy tests") == '"flaky" OR "onboarding proxy" OR "tests"'
    assert fts_query("see docs/oncall.md") == '"see" OR "docs oncall md"'


def test_compound_identifiers_match_only_side_by_side(store: Store) -> None:
    wanted = store.remember("The onboarding-proxy drops idle connections after 30 s")
    store.remember("The proxy in front of onboarding was replaced last year")
    hits = store.recall("onboarding-proxy")
    keyword = [h.memory.id for h in hits if h.match.keyword_rank is not None]
    assert keyword == [wanted.memory.id]


def test_filters_by_project_kind_tag_and_time(store: Store) -> None:
    api = store.remember(
        "Postgres connection pool size is 20", kind="fact", project="api", tags=["db", "pool"]
    )
    store.remember(
        "Postgres runs version 16 in production", kind="decision", project="api", tags=["db"]
    )
    store.remember("The web app caches Postgres query results for 5 minutes", project="web")
    query = "postgres settings"
    assert {h.memory.project for h in store.recall(query)} == {"api", "web"}
    assert {h.memory.project for h in store.recall(query, Filters(project="web"))} == {"web"}
    assert [h.memory.id for h in store.recall(query, Filters(kinds=("fact",)))] == [api.memory.id]
    assert [h.memory.id for h in store.recall(query, Filters(tags=("db", "pool")))] == [
        api.memory.id
    ]
    future = int(time.time() * 1000) + 60_000
    assert store.recall(query, Filters(since_ms=future)) == []
    assert len(store.recall(query, Filters(until_ms=future))) == 3
    assert store.recall(query, Filters(project="nope")) == []


def test_superseded_memory_ranks_below_its_successor(store: Store) -> None:
    old = store.remember("Use Python 3.10 for the backend services", topic_key="python-version")
    store.remember("Deploys happen on Tuesdays")
    new = store.remember("Use Python 3.12 for the backend", topic_key="python-version")
    assert new.supersedes == old.memory.id
    hits = store.recall("Use Python 3.10 for the backend services")  # matches the old one best
    ids = [h.memory.id for h in hits]
    assert ids.index(new.memory.id) < ids.index(old.memory.id)
    old_hit = hits[ids.index(old.memory.id)]
    assert old_hit.match.superseded_by == new.memory.id
    assert f"superseded by {new.memory.id}" in old_hit.match.explain()
    assert store.get(old.memory.id).content.startswith("Use Python 3.10")  # history stays


def test_results_say_why_they_matched(store: Store) -> None:
    store.remember("The nightly job exports invoices to SFTP")
    hit = store.recall("invoices export")[0]
    assert hit.match.semantic_rank == 1 and hit.match.cosine is not None
    assert hit.match.keyword_rank == 1 and hit.match.bm25 is not None and hit.match.bm25 > 0
    data = hit.to_dict()
    assert data["why"].startswith("semantic #1") and data["score"] > 0


def test_identical_content_returns_the_existing_memory(store: Store) -> None:
    first = store.remember("Feature flags live in LaunchDarkly", tags=["flags"])
    calls = store.embedder.texts_embedded  # type: ignore[attr-defined]
    again = store.remember("  Feature flags live in   LaunchDarkly ", tags=["release"])
    assert store.embedder.texts_embedded == calls  # type: ignore[attr-defined]
    assert not again.created and again.memory.id == first.memory.id
    assert again.memory.tags == ("flags", "release")
    assert store.count() == 1
    elsewhere = store.remember("Feature flags live in LaunchDarkly", project="other")
    assert elsewhere.created and store.count() == 2


def test_near_duplicates_are_reported_not_merged(store: Store) -> None:
    first = store.remember("We deploy the API with blue-green releases on Kubernetes")
    near = store.remember("We deploy our API using blue green releases on Kubernetes clusters")
    assert near.created
    assert [s.id for s in near.near_duplicates] == [first.memory.id]
    assert near.near_duplicates[0].similarity >= 0.92
    unrelated = store.remember("Lunch is at noon on Fridays")
    assert unrelated.near_duplicates == ()


def test_bad_queries_are_refused(store: Store) -> None:
    with pytest.raises(InvalidInput):
        store.recall("   ")
    with pytest.raises(InvalidInput):
        store.recall("x", limit=0)


def _hit(memory_id: str, score: float, superseded_by: str | None = None) -> Hit:
    memory = Memory(memory_id, "x", "note", "p", (), None, "t", 0, 0, False, "h", None, "")
    return Hit(memory, score, Match(superseded_by=superseded_by))


def test_successor_ordering_keeps_every_hit_even_in_a_cycle() -> None:
    chain = [_hit("old", 3, "mid"), _hit("mid", 2, "new"), _hit("x", 1.5), _hit("new", 1)]
    assert [h.memory.id for h in successors_first(chain)] == ["x", "new", "mid", "old"]
    cycle = [_hit("a", 2, "b"), _hit("b", 1, "a")]
    assert sorted(h.memory.id for h in successors_first(cycle)) == ["a", "b"]


def test_project_filter_stays_right_as_the_index_changes(store: Store) -> None:
    first = store.remember("Alpha uses Redis for rate limiting", project="alpha")
    store.remember("Beta uses Redis for sessions", project="beta")
    assert [h.memory.project for h in store.recall("redis", Filters(project="alpha"))] == ["alpha"]
    added = store.remember("Alpha caches Redis lookups for a minute", project="alpha")
    store.remember("Beta pins Redis 7.2", project="beta")
    store.forget(first.memory.id)  # the index moves its last row into the hole
    hits = store.recall("redis", Filters(project="alpha"))
    assert [h.memory.id for h in hits] == [added.memory.id]
    assert hits[0].match.semantic_rank == 1
    assert {h.memory.project for h in store.recall("redis", Filters(project="beta"))} == {"beta"}
    assert store.recall("redis", Filters(project="gamma")) == []


# --- the keyword half searches only rare terms --------------------------------------------------

COMMON = [f"The deploy of the cache service changed setting {n} after release" for n in range(40)]


def _keyword_ids(store: Store, query: str, filters: Filters | None = None) -> list[str]:
    """The memories the keyword half ranked for ``query``, best first."""
    hits = store.recall(query, filters, limit=50)
    ranked = sorted((h for h in hits if h.match.keyword_rank is not None), key=_keyword_rank)
    return [h.memory.id for h in ranked]


def _keyword_rank(hit: Hit) -> int:
    assert hit.match.keyword_rank is not None
    return hit.match.keyword_rank


def _remember_all(store: Store, texts: list[str], project: str | None = None) -> list[str]:
    items = [NewMemory(text, project=project) for text in texts]
    return [r.memory.id for r in store.remember_many(items)]


def test_a_rare_term_among_common_words_is_found_by_keyword(store: Store) -> None:
    _remember_all(store, COMMON)
    wanted = store.remember("The deploy failed with ERR_QUOTA_7 after the cache change").memory
    # The old shape ranked all 41 memories (each holds deploy/cache/change); the rare term decides.
    assert _keyword_ids(store, "why did the deploy fail with ERR_QUOTA_7 after the change") == [
        wanted.id
    ]


def test_a_rare_phrase_of_common_words_is_found_by_keyword(store: Store) -> None:
    _remember_all(store, [f"The onboarding flow calls proxy number {n}" for n in range(40)])
    wanted = store.remember("The onboarding-proxy drops idle connections").memory
    assert _keyword_ids(store, "why does onboarding-proxy drop connections") == [wanted.id]


def test_common_words_only_leave_ranking_to_meaning(store: Store) -> None:
    ids = _remember_all(store, COMMON)
    hits = store.recall("what did the deploy of the cache change", limit=5)
    assert hits and all(h.memory.id in ids for h in hits)
    assert all(h.match.keyword_rank is None and h.match.semantic_rank for h in hits)


def test_keyword_search_on_rare_terms_keeps_filters(store: Store) -> None:
    _remember_all(store, COMMON)
    api = store.remember("Deploy key rotation uses vault path kv/deploy", project="api").memory
    web = store.remember("Vault path kv/deploy is read-only for the web app", project="web").memory
    assert set(_keyword_ids(store, "vault deploy")) == {api.id, web.id}
    assert _keyword_ids(store, "vault deploy", Filters(project="web")) == [web.id]
    assert _keyword_ids(store, "vault deploy", Filters(kinds=("decision",))) == []


def test_keyword_results_follow_writes_as_terms_turn_common_or_rare(store: Store) -> None:
    first = store.remember("Sharding plan for the ledger uses hash ranges").memory
    assert _keyword_ids(store, "ledger sharding") == [first.id]  # counted as rare, remembered
    many = _remember_all(store, [f"Ledger entry format note {n}" for n in range(60)])
    # "ledger" is now in 61 of 62 memories: common, so only "sharding" is searched.
    assert _keyword_ids(store, "ledger sharding") == [first.id]
    assert _keyword_ids(store, "ledger") == []
    for memory_id in many[:55]:
        store.forget(memory_id)
    # Rare again: the remembered count cannot vouch for it after 55 changes, so it is recounted.
    assert set(_keyword_ids(store, "ledger")) == {first.id, *many[55:]}
    late = store.remember("Ledger archival moves entries to cold storage").memory
    assert late.id in _keyword_ids(store, "ledger archival")
    assert _keyword_ids(store, "archival")[0] == late.id


def test_common_words_rank_the_rows_a_rare_term_found(store: Store) -> None:
    _remember_all(store, COMMON)
    others = _remember_all(store, [f"vault-proxy note {n}: rotate the token" for n in range(4)])
    wanted = store.remember("vault-proxy: after a deploy, flush the cache").memory
    ranked = _keyword_ids(store, "cache flush after the deploy of vault-proxy")
    assert ranked[0] == wanted.id and set(ranked) == {wanted.id, *others}


def test_scoring_the_heaviest_rows_first_keeps_the_exact_top(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lengths are read a few rows at a time and the walk stops early; the top it keeps is the
    one scoring every row gives, for any filter."""
    filler = " ".join(f"word{n}" for n in range(30))
    texts = [
        f"kestrel {'heron ' * (n % 3)}note {n} {filler[: (n * 37) % len(filler)]}"
        for n in range(18)
    ]
    _remember_all(store, COMMON)
    _remember_all(store, texts[:9], project="api")
    _remember_all(store, texts[9:], project="web")
    gone = store.remember("kestrel heron", project="api").memory
    store.forget(gone.id)
    terms = ["kestrel", "heron"]
    read: list[int] = []
    counts = search_queries._token_counts

    def counting(conn: Any, rowids: list[int]) -> dict[int, int]:
        read.extend(rowids)
        return counts(conn, rowids)

    for filters in (Filters(), Filters(project="web"), Filters(project="api")):
        with store.db.read() as conn:
            everything = search_queries.KeywordSearch().search(conn, terms, filters, 1000)
            monkeypatch.setattr(search_queries, "SCORE_STEP", 2)
            monkeypatch.setattr(search_queries, "_token_counts", counting)
            read.clear()
            walked = search_queries.KeywordSearch().search(conn, terms, filters, 3)
            monkeypatch.undo()
        assert len(everything) == (18 if filters.empty else 9)
        assert walked == everything[:3]
        assert len({score for _, score in everything}) > 3  # lengths really differ
        if filters.empty:  # the kestrel-only rows weigh too little to be read at all
            assert len(read) == 12


def test_keyword_results_follow_edits_and_forgetting(store: Store) -> None:
    _remember_all(store, COMMON)
    memory = store.remember("The billing export runs under quartz scheduler").memory
    assert _keyword_ids(store, "quartz scheduler") == [memory.id]
    store.edit(memory.id, content="The billing export runs under chronos scheduler")
    assert _keyword_ids(store, "quartz") == []
    assert _keyword_ids(store, "chronos") == [memory.id]
    store.forget(memory.id)
    assert _keyword_ids(store, "chronos") == []
