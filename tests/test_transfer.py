"""Export to JSON Lines and import back: same memories, same vectors, no re-embedding."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np

from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.interchange import jsonl
from cairn.store.db import Database


def _fill(store: Store) -> None:
    store.remember(
        "Queue workers scale on SQS depth", kind="decision", project="api", tags=["scaling"]
    )
    store.remember("Old: the API uses Flask", project="api", topic_key="framework")
    store.remember("The API uses FastAPI", project="api", topic_key="framework")
    gone = store.remember("Temporary note to forget")
    store.forget(gone.memory.id)


def _snapshot(store: Store) -> dict[str, tuple[object, ...]]:
    out = {}
    for memory, model_id, vector in store.iter_with_vectors():
        out[memory.id] = (
            memory.content,
            memory.kind,
            memory.project,
            memory.tags,
            memory.topic_key,
            memory.created_at,
            model_id,
            vector,
        )
    return out


def test_export_then_import_reproduces_memories_and_vectors_without_embedding(
    tmp_path: Path, store: Store, embedder: OnnxEmbedder
) -> None:
    _fill(store)
    buffer = io.StringIO()
    assert jsonl.export(store, buffer) == 3
    lines = buffer.getvalue().splitlines()
    assert json.loads(lines[0])["record"] == "header"
    assert "Temporary note" not in buffer.getvalue()
    with Store(Database(tmp_path / "fresh.db"), embedder) as fresh:
        calls = embedder.texts_embedded
        report = jsonl.import_(fresh, lines)
        assert embedder.texts_embedded == calls  # zero embedding calls
        assert (report.imported, report.embedded, report.errors) == (3, 0, [])
        assert _snapshot(fresh) == _snapshot(store)
        relations = [(r.from_id, r.to_id, r.type) for r in fresh.all_relations()]
        assert relations == [(r.from_id, r.to_id, r.type) for r in store.all_relations()]
        again = jsonl.import_(fresh, lines)
        assert (again.imported, again.unchanged, again.relations) == (0, 4, 0)
        assert fresh.count() == 3


def test_import_order_does_not_invert_supersession(tmp_path: Path, store: Store) -> None:
    lines = [
        json.dumps({"content": "Use Node 22", "topic_key": "node", "created_at": "2026-03-01"}),
        json.dumps({"content": "Use Node 18", "topic_key": "node", "created_at": "2025-01-01"}),
    ]
    jsonl.import_(store, lines)
    by_content = {m.content: m.id for m in store.list()}
    assert [(r.from_id, r.to_id) for r in store.all_relations()] == [
        (by_content["Use Node 22"], by_content["Use Node 18"])
    ]


def test_bad_lines_are_reported_by_number_and_nothing_of_them_is_applied(store: Store) -> None:
    good = json.dumps({"content": "Good line one", "tags": ["ok"]})
    lines = [
        good,
        "{not json",
        json.dumps({"content": ""}),
        json.dumps({"content": "Bad tag", "tags": ["has space"]}),
        json.dumps({"content": "Bad id", "id": "123"}),
        json.dumps(["a", "list"]),
        json.dumps(
            {"content": "Wrong dims", "model_id": store.embedder.model_id, "embedding": "AAAA"}
        ),
        json.dumps({"record": "relation", "from_id": "x", "to_id": "y", "type": "supersedes"}),
        json.dumps({"content": "Good line two", "kind": "fact"}),
    ]
    report = jsonl.import_(store, lines)
    assert [n for n, _ in report.errors] == [2, 3, 4, 5, 6, 7, 8]
    messages = dict(report.errors)
    assert "not valid JSON" in messages[2]
    assert "empty" in messages[3]
    assert "has space" in messages[4]
    assert "not a UUID" in messages[5]
    assert "dimensions" in messages[7]
    assert "no memory has the id" in messages[8]
    assert sorted(m.content for m in store.list()) == ["Good line one", "Good line two"]
    assert report.embedded == 2


def test_vectors_of_another_model_are_re_embedded(store: Store) -> None:
    vector = np.ones(384, dtype="<f4") / np.sqrt(384)

    line = json.dumps(
        {
            "content": "Foreign vector",
            "model_id": "some-other-model",
            "embedding": base64.b64encode(vector.tobytes()).decode(),
        }
    )
    report = jsonl.import_(store, [line])
    assert report.imported == 1 and report.embedded == 1
    assert store.recall("foreign vector")[0].match.cosine > 0.9  # type: ignore[operator]


def test_the_import_report_counts_relations_and_progress_covers_every_line(
    tmp_path: Path, store: Store, embedder: OnnxEmbedder
) -> None:
    """A topic's supersedes relation arrives with its memories: counted as a relation, not as
    unchanged; and progress reaches the line count the CLI's bar is sized by (header too)."""
    _fill(store)
    buffer = io.StringIO()
    jsonl.export(store, buffer)
    lines = buffer.getvalue().splitlines(keepends=True)
    assert [json.loads(line)["record"] for line in lines].count("relation") == 1
    with Store(Database(tmp_path / "fresh.db"), embedder) as fresh:
        done: list[int] = []
        report = jsonl.import_(fresh, lines, done.append)
        assert (report.imported, report.unchanged, report.relations) == (3, 0, 1)
        assert sum(done) == len(lines) == 5
        done.clear()
        again = jsonl.import_(fresh, lines, done.append)
        assert (again.imported, again.unchanged, again.relations) == (0, 4, 0)
        assert sum(done) == len(lines)
