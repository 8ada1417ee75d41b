"""The browser's parts that need no browser: word diff, timeline series, per-day counts."""

from __future__ import annotations

from cairn.api.browser import day_series
from cairn.api.browser_sync import rule_lines, word_diff
from cairn.device_store import Store
from cairn.model import Filters
from cairn.store import search_queries


def test_the_word_diff_marks_what_changed_and_escapes_the_rest() -> None:
    diff = word_diff("The API allows 100 <b>requests</b>", "The API allows 200 <b>requests</b> now")
    assert diff == (
        "The API allows <del>100</del><ins>200</ins> &lt;b&gt;requests&lt;/b&gt;<ins> now</ins>"
    )
    assert word_diff("same", "same") == "same"


def test_the_timeline_keeps_seven_series_and_adds_up_the_rest_as_other() -> None:
    labels = ["2026-12-01", "2026-12-02"]
    rows = [("2026-12-01", f"p{n}", n + 1) for n in range(9)] + [("2026-12-02", "p0", 5)]
    series = day_series(labels, rows)
    names = [s.name for s in series]
    assert names == ["p8", "p7", "p6", "p0", "p5", "p4", "p3", "other"]  # p0 and p5 tie at 6
    by_name = {s.name: list(s.values) for s in series}
    assert by_name["p0"] == [1, 5] and by_name["other"] == [2 + 3, 0]
    assert sum(sum(s.values) for s in series) == sum(n for _, _, n in rows)


def test_memories_are_counted_per_day_by_kind_and_project(store: Store) -> None:
    store.remember("one decision", kind="decision", project="api")
    store.remember("another decision", kind="decision", project="web")
    store.remember("a fact", kind="fact", project="api")
    forgotten = store.remember("gone soon", kind="fact", project="api").memory
    store.forget(forgotten.id)
    with store.db.read() as conn:
        by_kind = search_queries.per_day(conn, "kind", 0, Filters())
        by_project = search_queries.per_day(conn, "project", 0, Filters(project="api"))
    [(day, _, _), *_] = by_kind
    assert sorted((k, n) for _, k, n in by_kind) == [("decision", 2), ("fact", 1)]
    assert [(p, n) for _, p, n in by_project] == [("api", 2)]
    assert len(day) == 10 and day.startswith("20")


def test_selective_sync_rules_read_as_lines() -> None:
    rules = {"include_projects": ("api", "web"), "exclude_tags": (), "file_chunks": False}
    assert rule_lines(rules) == [
        ("include projects", "api, web"),
        ("exclude tags", ""),
        ("file chunks", "false"),
    ]
