"""Validation and normalisation rules, the hybrid logical clock and UUIDv7 ids."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cairn import model
from cairn.errors import ContentEmpty, ContentTooLarge, InvalidInput
from cairn.hlc import HLC, MAX_COUNTER, observe, tick
from cairn.ids import uuid7


def test_content_hash_ignores_whitespace_and_unicode_form() -> None:
    composed = "Caf\u00e9  uses\n\tPostgres "
    decomposed = "Cafe\u0301 uses Postgres"
    assert model.content_hash(composed) == model.content_hash(decomposed)
    assert model.content_hash("a b") != model.content_hash("A b")


def test_content_limits() -> None:
    with pytest.raises(ContentEmpty):
        model.check_content("  \n ")
    with pytest.raises(ContentTooLarge) as info:
        model.check_content("x" * (model.MAX_CONTENT_BYTES + 1))
    assert "split it" in info.value.message


def test_tags_are_lowercased_deduplicated_and_checked() -> None:
    assert model.check_tags(["DB", "db", " api "]) == ("api", "db")
    for bad in ("two words", "a,b", "", "x" * 65):
        with pytest.raises(InvalidInput):
            model.check_tags([bad])


def test_kinds_are_an_open_set_of_words() -> None:
    assert model.check_kind("Runbook") == "runbook"
    with pytest.raises(InvalidInput):
        model.check_kind("not a kind!")


def test_parse_time_accepts_iso_and_ages() -> None:
    assert model.parse_time("2026-01-31") == 1769817600000
    assert model.parse_time("7d") < model.parse_time("1d")
    with pytest.raises(InvalidInput):
        model.parse_time("last tuesday")


@settings(max_examples=500, deadline=None)
@given(st.from_regex(model.TIME_INPUT, fullmatch=True))
def test_every_time_the_published_pattern_admits_is_read(text: str) -> None:
    """The APIs publish TIME_INPUT as the time filters' schema; a time it admits is never
    refused (the schema fuzz sent 3729-11-31, which an earlier pattern admitted)."""
    assert model.parse_time(text) >= model.EARLIEST_MS


@pytest.mark.parametrize(
    "text", ["3729-11-31", "2023-02-29", "1900-02-29", "0000-01-01", "2026-04-31"]
)
def test_days_the_calendar_lacks_are_outside_the_pattern(text: str) -> None:
    assert re.fullmatch(model.TIME_INPUT, text) is None
    with pytest.raises(InvalidInput):
        model.parse_time(text)


def test_an_age_past_the_year_1_is_outside_the_pattern_and_refused() -> None:
    assert re.fullmatch(model.TIME_INPUT, "999999999w") is None
    with pytest.raises(InvalidInput, match="past the year 1"):
        model.parse_time("999999999w")


@pytest.mark.parametrize("text", ["\u0667d", "7d\n7d", "\uff17d"])
def test_an_age_is_ascii_digits_and_a_unit_only(text: str) -> None:
    with pytest.raises(InvalidInput):
        model.parse_time(text)


def test_uuid7_is_a_time_ordered_version_7_uuid() -> None:
    first, second = uuid7(1_000), uuid7(2_000)
    assert uuid.UUID(first).version == 7
    assert first < second


def test_hlc_tick_is_monotonic_even_when_the_wall_clock_goes_back() -> None:
    clock = HLC(5_000, 0, "dev")
    later = tick(clock, 4_000)
    assert later > clock
    assert tick(HLC(5_000, MAX_COUNTER, "dev"), 5_000) == HLC(5_001, 0, "dev")


@given(
    st.integers(0, 10**12),
    st.integers(0, 100),
    st.integers(0, 10**12),
    st.integers(0, 100),
    st.integers(0, 10**12),
)
def test_hlc_observe_is_after_both_clocks(
    wall_a: int, counter_a: int, wall_b: int, counter_b: int, now: int
) -> None:
    local, remote = HLC(wall_a, counter_a, "a"), HLC(wall_b, counter_b, "b")
    after = observe(local, remote, now)
    assert (after.wall_ms, after.counter) > (local.wall_ms, local.counter)
    assert (after.wall_ms, after.counter) > (remote.wall_ms, remote.counter)
    assert after.device_id == "a"


@given(
    st.integers(0, 10**12),
    st.integers(0, MAX_COUNTER),
    st.integers(0, 10**12),
    st.integers(0, MAX_COUNTER),
)
def test_packed_hlc_sorts_like_the_clock(w1: int, c1: int, w2: int, c2: int) -> None:
    a, b = HLC(w1, c1, "dev"), HLC(w2, c2, "dev")
    assert (a < b) == (a.pack() < b.pack())
    assert HLC.unpack(a.pack()) == a


def test_why_never_rounds_a_keyword_score_to_zero() -> None:
    """FTS5's BM25 is tiny in a small store; `why` must still show it, not `bm25 0.00`."""
    tiny = model.Match(semantic_rank=1, cosine=0.66, keyword_rank=1, bm25=0.0000012)
    assert tiny.explain() == "semantic #1 (cosine 0.66); keyword #1 (bm25 1.2e-06)"
    assert model.Match(keyword_rank=2, bm25=9.4612).explain() == "keyword #2 (bm25 9.46)"


def test_a_relation_reads_from_either_end() -> None:
    relation = model.Relation("new", "old", "supersedes", 0)
    assert relation.seen_from("new") == ("supersedes", "old")
    assert relation.seen_from("old") == ("superseded by", "new")
    assert model.Relation("a", "b", "duplicate_of", 0).seen_from("b") == ("duplicated by", "a")
