"""Remembering a batch in one call leaves the store as remembering its items one by one would.

The batch path (``Store._write`` writing runs of new rows with ``inserts.insert_many``) is what
``cairn import`` and ``remember_many`` use; the one-by-one path is what an agent's ``remember``
uses. Rows, tags, vectors, keyword index, outbox mutations, clocks and topic relations must match.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.errors import InvalidInput
from cairn.interchange import jsonl
from cairn.memory_rules import NewMemory
from cairn.store.db import Database

T0 = 1_760_000_000_000


def _id(n: int) -> str:
    return str(uuid.UUID(int=(0x0199 << 112) | n))


def _vectors(count: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(count, 384)).astype(np.float32)
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


HELD = [
    NewMemory("Held before: deploys run on Fridays", tags=("old",), id=_id(1), created_at=T0),
    NewMemory("Deploy v1 uses blue-green", topic_key="deploy", id=_id(2), created_at=T0 + 10),
]
BATCH = [
    NewMemory("Alpha: the cache is keyed by tenant", tags=("cache",), id=_id(10), created_at=T0),
    NewMemory("Held before: deploys run on Fridays", tags=("new", "old")),  # held: adds a tag
    NewMemory("Deploy v2 uses canaries", topic_key="deploy", id=_id(11)),  # supersedes v1
    NewMemory("Beta: retries back off", kind="decision", project="api", id=_id(12)),
    NewMemory("Alpha: the cache is keyed by tenant", tags=("x",), id=_id(13)),  # brought above
    NewMemory("Deploy v3 uses canaries at 5%", topic_key="deploy", id=_id(14)),  # after v2
    NewMemory("Deploy v0 was manual", topic_key="deploy", id=_id(15), created_at=T0 + 5),
    NewMemory("Gamma: no id given, one is made", tags=("made",)),
    NewMemory("Alpha: the cache is keyed by tenant", tags=("cache",)),  # nothing new
    NewMemory("Beta: retries back off", project="other", id=_id(16)),  # another project
]

GIVEN = {item.id for item in [*HELD, *BATCH] if item.id} | {_id(17)}


def _open(path: Path, embedder: OnnxEmbedder) -> Store:
    return Store(Database(path), embedder, project="test")


def _state(store: Store, results: list[Any]) -> dict[str, Any]:
    """What a user or a replica could notice, with made ids and times replaced by the text."""
    conn = store.db.conn
    text_of = {r[0]: r[1] for r in conn.execute("SELECT id, content FROM memories")}
    rows = conn.execute(
        "SELECT m.rowid, m.id, m.content, m.kind, m.project, m.topic_key, m.deleted, "
        "m.content_hash, m.model_id, m.hlc, m.seq, m.created_hlc, m.field_hlc, "
        "(SELECT group_concat(tag) FROM (SELECT tag FROM memory_tags t "
        "WHERE t.memory_rowid = m.rowid ORDER BY tag)), v.vector, v.model_id "
        "FROM memories m LEFT JOIN memory_vectors v ON v.memory_rowid = m.rowid ORDER BY m.seq"
    ).fetchall()
    outbox = conn.execute("SELECT entity, entity_id, hlc FROM outbox ORDER BY seq").fetchall()
    newest = {entity_id: hlc for _e, entity_id, hlc in outbox}
    for row in rows:  # each row's clock is its newest change's
        assert row[9] == newest[row[1]]
    clocks = [hlc for _e, _id, hlc in outbox]
    assert clocks == sorted(clocks) and len(set(clocks)) == len(clocks)
    stored_clock = conn.execute("SELECT value FROM meta WHERE key = 'hlc'").fetchone()[0]
    assert stored_clock == clocks[-1]

    def named(entity_id: str) -> str:
        parts = entity_id.split("|")
        return "|".join(text_of.get(p, p) for p in parts)

    keyword = conn.execute(
        "SELECT m.content FROM memories_fts f JOIN memories m ON m.rowid = f.rowid "
        "WHERE memories_fts MATCH 'canaries OR cache OR retries' ORDER BY m.content"
    ).fetchall()
    return {
        "rows": [(r[2], *r[3:9], r[13], r[14], r[15], r[1] in GIVEN) for r in rows],
        "given_ids": sorted(r[1] for r in rows if r[1] in GIVEN),
        "rowids": [r[0] for r in rows],
        "seqs": [r[10] for r in rows],
        "outbox": [(e, named(i)) for e, i, _h in outbox],
        "relations": conn.execute(
            "SELECT f.content, t.content, r.type, r.deleted FROM relations r "
            "JOIN memories f ON f.id = r.from_id JOIN memories t ON t.id = r.to_id "
            "ORDER BY 1, 2, 3"
        ).fetchall(),
        "keyword_index": [r[0] for r in keyword],
        "indexed": conn.execute("SELECT count(*) FROM memories_fts_docsize").fetchone()[0],
        "results": [
            (r.created, r.memory.content, r.memory.tags, r.memory.hlc == newest[r.memory.id])
            for r in results
        ]
        + [text_of.get(r.supersedes) for r in results],
    }


def test_a_batch_writes_what_remembering_its_items_one_by_one_writes(
    tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    held, vectors = _vectors(len(HELD), seed=1), _vectors(len(BATCH))
    with (
        _open(tmp_path / "batch.db", embedder) as batch,
        _open(tmp_path / "one.db", embedder) as one,
    ):
        for store in (batch, one):
            store.remember_embedded(HELD, held)
        together = batch.remember_embedded(BATCH, vectors)
        apart = [
            one.remember_embedded([item], vectors[i : i + 1])[0] for i, item in enumerate(BATCH)
        ]
        assert _state(batch, together) == _state(one, apart)
        # What the batch did, spelled out (the comparison alone would pass if both were wrong).
        assert [r.created for r in together] == [
            True, False, True, True, False, True, True, True, False, True,
        ]  # fmt: skip
        assert together[1].memory.id == _id(1) and together[1].memory.tags == ("new", "old")
        assert together[4].memory.id == _id(10) and together[4].memory.tags == ("cache", "x")
        assert together[2].supersedes == _id(2) and together[5].supersedes == _id(11)
        assert together[6].supersedes is None
        chain = batch.db.conn.execute(
            "SELECT from_id, to_id FROM relations WHERE type = 'supersedes' AND deleted = 0"
        ).fetchall()
        assert sorted(chain) == sorted([(_id(2), _id(15)), (_id(11), _id(2)), (_id(14), _id(11))])
        assert batch.count() == one.count() == 9


@pytest.mark.parametrize(
    "clash",
    [
        NewMemory("Another text under a held id", id=_id(1)),
        NewMemory("Another text under an id given earlier in the batch", id=_id(10)),
    ],
)
def test_a_batch_with_an_id_already_used_changes_nothing(
    tmp_path: Path, embedder: OnnxEmbedder, clash: NewMemory
) -> None:
    with _open(tmp_path / "cairn.db", embedder) as store:
        store.remember_embedded(HELD, _vectors(len(HELD), seed=1))
        before = _state(store, [])
        with pytest.raises(InvalidInput, match="already exists"):
            store.remember_embedded([*BATCH[:4], clash], _vectors(5))
        assert _state(store, []) == before


def test_an_import_with_bad_lines_applies_the_good_ones_as_one_by_one_remembering_would(
    tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    vectors = _vectors(len(BATCH))
    records = [
        {
            "content": item.content,
            "kind": item.kind,
            "project": item.project,
            "tags": list(item.tags),
            "topic_key": item.topic_key,
            "id": item.id,
            "created_at": item.created_at,
            "model_id": embedder.model_id,
            "embedding": base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii"),
        }
        for item, vector in zip(BATCH, vectors, strict=True)
    ]
    records[7]["id"] = _id(17)  # the importer would make a random one
    good = [json.dumps(r) for r in records]
    bad = [
        "{not json",
        json.dumps({**records[0], "id": _id(18), "embedding": "!!"}),
        json.dumps({**records[3], "id": _id(19), "tags": "one"}),
    ]
    lines = [*good[:3], bad[0], *good[3:6], bad[1], *good[6:], bad[2]]
    items = [
        NewMemory(**{k: v for k, v in r.items() if k not in ("model_id", "embedding")})
        for r in records
    ]
    with (
        _open(tmp_path / "import.db", embedder) as imported,
        _open(tmp_path / "one.db", embedder) as one,
    ):
        for store in (imported, one):
            store.remember_embedded(HELD, _vectors(len(HELD), seed=1))
        report = jsonl.import_(imported, lines)
        apart = [
            one.remember_embedded([item], vectors[i : i + 1])[0] for i, item in enumerate(items)
        ]
        assert [n for n, _message in report.errors] == [4, 8, 13]
        assert (report.imported, report.duplicates, report.embedded) == (7, 3, 0)
        assert _state(imported, [])["rows"] == _state(one, apart)["rows"]
        mine, theirs = _state(imported, []), _state(one, [])
        assert mine == theirs
