"""Fuzzing JSONL import: a file may hold any line.

One hostile line (a valid record with fields mutated, bytes flipped, or anything at all) sits among
good ones. The import never raises: a line it refuses is reported by its number and nothing of
it is applied, every other line imports; a line it accepts is stored as a memory that exports and
imports back as the same one.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cairn import model
from cairn.device_store import Store
from cairn.ids import uuid7
from cairn.interchange import jsonl

from .fuzzing import ci, fragments, mutated, mutated_json, soak

VECTOR = base64.b64encode(np.full(384, 0.05, dtype="<f4").tobytes()).decode()


def _record(model_id: str, **changes: Any) -> dict[str, Any]:
    return {
        "record": "memory",
        "id": uuid7(),
        "content": f"The queue drains in order {uuid7()}",
        "kind": "fact",
        "project": "fuzz",
        "tags": ["queue", "ops"],
        "topic_key": None,
        "created_at": "2026-01-31T10:00:00.000+00:00",
        "source": "cli",
        "model_id": model_id,
        "embedding": VECTOR,
        **changes,
    }


TEMPLATE = _record("all-MiniLM-L6-v2-onnx-int8")
RELATION = {"record": "relation", "from_id": TEMPLATE["id"], "to_id": uuid7(), "type": "relates_to"}


@st.composite
def hostile_lines(draw: st.DrawFn) -> str:
    how = draw(st.sampled_from(["fields", "fields", "relation", "bytes", "any"]))
    if how == "fields":
        return str(draw(mutated_json(TEMPLATE)))
    if how == "relation":
        return str(draw(mutated_json(RELATION)))
    if how == "bytes":
        raw = draw(mutated(json.dumps(TEMPLATE).encode()))
        return raw.decode("utf-8", "surrogateescape")  # how the CLI reads a file's bytes
    return str(draw(fragments | st.text(max_size=50)))


def _line(**changes: Any) -> str:
    return json.dumps({**TEMPLATE, **changes})


def _check_import(store: Store, hostile: str, at: int) -> None:
    good = [_record(store.embedder.model_id) for _ in range(3)]
    lines = [json.dumps({"record": "header", "format": "cairn-jsonl", "version": 1})]
    lines += [json.dumps(record) for record in good]
    lines.insert(1 + at, hostile.replace("\n", " ").replace("\r", " "))
    number = 2 + at
    before = store.count()
    report = jsonl.import_(store, lines)
    for record in good:
        assert store.get(record["id"]).content == record["content"]
    assert [n for n, _message in report.errors] in ([], [number])
    if report.errors:
        assert store.count() == before + 3  # nothing of the refused line was applied
        return
    assert store.count() - before - 3 in (0, 1)  # a header, a relation, or one memory
    again = jsonl.import_(store, lines[1 + at : 2 + at])
    assert again.errors == [] and again.imported == 0  # what it stored reads back as the same


@ci(80)
@given(hostile=hostile_lines(), at=st.integers(0, 3))
@example(hostile="[" * 50_000 + "]" * 50_000, at=1)  # RecursionError from json.loads
@example(hostile="1" * 5_000, at=1)  # ValueError (not JSONDecodeError) past 4300 digits
@example(hostile=_line(topic_key=5), at=0)  # AttributeError: 'int' has no strip()
@example(hostile=_line(created_at=10**20), at=2)  # past SQLite's integers: the batch failed
@example(hostile=_line(created_at="99999999w"), at=0)  # an age before year 1
@example(hostile=_line(content="caf\udce9"), at=1)  # a byte that is not UTF-8, read as is
@example(hostile=_line(tags=["\ud800"]), at=3)
@example(hostile=json.dumps({**RELATION, "to_id": "\ud800"}), at=3)
@example(hostile=_line(project=123), at=0)  # not a string: str() made one of it
@example(hostile=_line(created_at=True), at=0)
def test_a_bad_line_is_reported_by_number_and_the_rest_imports(
    store: Store, hostile: str, at: int
) -> None:
    _check_import(store, hostile, at)


@ci(40)
@given(
    content=st.text(min_size=1, max_size=300).filter(
        lambda text: text.strip() and "\x00" not in text
    ),
    kind=st.from_regex(model.KIND_PATTERN, fullmatch=True),
    tags=st.lists(st.from_regex(r"[a-z0-9_:-]{1,20}", fullmatch=True), max_size=5),
    # Topic keys take no control characters (model.TOPIC_KEY_INPUT); those are refused, not kept.
    topic_key=st.none()
    | st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=30).filter(
        lambda key: key.strip() and not any("\x7f" <= c <= "\x9f" for c in key)
    ),
    created_at=st.integers(0, model.MAX_MS),
)
@example(content="x", kind="fact", tags=[], topic_key=None, created_at=0)  # imported as "now"
@example(content="x", kind="fact", tags=[], topic_key=None, created_at=2018)  # as 2017 ms
@example(content="x", kind="fact", tags=[], topic_key=None, created_at=model.MAX_MS)  # .998
def test_a_record_imports_and_exports_as_itself(
    store: Store, content: str, kind: str, tags: list[str], topic_key: str | None, created_at: int
) -> None:
    project = f"p-{uuid7()}"
    record = _record(
        store.embedder.model_id,
        content=content,
        kind=kind,
        project=project,
        tags=tags,
        topic_key=topic_key,
        created_at=model.iso(created_at),
    )
    report = jsonl.import_(store, [json.dumps(record)])
    assert report.errors == [] and report.imported + report.duplicates == 1
    out = io.StringIO()
    jsonl.export(store, out, model.Filters(project=project))
    exported = [json.loads(line) for line in out.getvalue().split("\n")[1:-1]]
    if report.imported:
        (line,) = exported
        assert line["content"] == content.strip() and line["kind"] == kind
        assert line["tags"] == sorted(set(tags)) and line["topic_key"] == (
            topic_key.strip() if topic_key else None
        )
        assert line["created_at"] == model.iso(created_at) and line["id"] == record["id"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
@soak(5_000)
@given(hostile=hostile_lines(), at=st.integers(0, 3))
def test_import_soak(store: Store, hostile: str, at: int) -> None:
    _check_import(store, hostile, at)
