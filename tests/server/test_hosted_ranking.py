"""The hosted index's searches on each storage backend: keyword ranking weighs how rare a word
is (BM25, as devices rank), its statistics follow every fold, and filters hold on both halves."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cairn.model import Filters, Memory
from cairn.replication import MemoryState
from cairn.search.hybrid import query_terms
from cairn.server.storage import INDEX_DIM, IndexedMemory, Quota, ServerStorage
from cairn.sync import payload

from ..conftest import server_storage_for

NOW = 1_700_000_000_000


@pytest.fixture
def storage(
    tmp_path: Path, server_backend: str, request: pytest.FixtureRequest
) -> Iterator[ServerStorage]:
    made = server_storage_for(server_backend, tmp_path, request)
    made.create_workspace("w1", "hosted", NOW)
    yield made
    made.close()


def indexed(
    memory_id: str, content: str, vector: Any = None, deleted: bool = False, **fields: Any
) -> IndexedMemory:
    memory = Memory(
        memory_id,
        "" if deleted else content,
        fields.get("kind", "note"),
        fields.get("project", "p"),
        tuple(fields.get("tags", ())),
        None,
        "laptop",
        fields.get("created_at", NOW),
        NOW,
        deleted,
        f"h-{content}",
        None,
        f"{NOW:013d}-0000-laptop",
    )
    body = payload.encode_memory(MemoryState(memory, memory.hlc, {}, (), None))
    raw = None if vector is None else np.asarray(vector, dtype="<f4").tobytes()
    return IndexedMemory(memory, body, raw)


class Folder:
    """Folds pages of index rows into workspace w1, as the hosted index does."""

    def __init__(self, storage: ServerStorage) -> None:
        self.storage = storage
        self.position = 0

    def fold(self, *memories: IndexedMemory) -> None:
        moved = self.storage.put_index("w1", self.position, self.position + 1, memories, [])
        assert moved
        self.position += 1


EVERYTHING = Filters()


def ids(storage: ServerStorage, query: str, filters: Filters = EVERYTHING) -> list[str]:
    return [m for m, _ in storage.keyword("w1", query_terms(query), filters, 50)]


def test_a_rare_word_outranks_a_word_every_memory_holds(storage: ServerStorage) -> None:
    folder = Folder(storage)
    common = [indexed(f"c{n}", f"deploy step {n} of the pipeline") for n in range(30)]
    folder.fold(
        *common,
        indexed("twice", "deploy deploy notes"),
        indexed("rare", "flamegraph notes"),
    )
    ranked = ids(storage, "deploy flamegraph")
    assert ranked[0] == "rare"  # without IDF, "deploy" twice would win
    assert set(ranked) == {"rare", "twice", *(m.memory.id for m in common)}
    scores = dict(storage.keyword("w1", query_terms("deploy flamegraph"), Filters(), 50))
    assert scores["rare"] > scores["twice"] > scores["c0"] > 0


def test_file_names_match_by_their_parts_as_on_a_device(storage: ServerStorage) -> None:
    Folder(storage).fold(
        indexed("lock", "pnpm-lock.yaml conflicts after the merge"),
        indexed("other", "the lock on the deploy queue"),
    )
    assert ids(storage, "pnpm-lock.yaml") == ["lock"]
    assert ids(storage, "yaml") == ["lock"]


def test_statistics_follow_edits_forgets_and_refolds(storage: ServerStorage) -> None:
    """Which word is rare changes as memories are edited and forgotten, and the ranking
    follows; folding the same states again changes nothing."""
    folder = Folder(storage)
    alpha = [indexed(f"a{n}", f"kafka topic {n}") for n in range(20)]
    folder.fold(*alpha, indexed("r", "redis kafka"), indexed("k", "kafka kafka notes"))
    assert ids(storage, "kafka redis")[0] == "r"
    # Now redis is everywhere and kafka nearly gone: the memory with kafka twice wins.
    folder.fold(*(indexed(f"a{n}", f"redis topic {n}") for n in range(20)))
    assert ids(storage, "kafka redis")[0] == "k"
    before = storage.keyword("w1", query_terms("kafka redis"), Filters(), 50)
    folder.fold(*(indexed(f"a{n}", f"redis topic {n}") for n in range(20)))  # a refold
    assert storage.keyword("w1", query_terms("kafka redis"), Filters(), 50) == before
    # Forgotten memories leave the results and the statistics.
    folder.fold(*(indexed(f"a{n}", "", deleted=True) for n in range(20)), indexed("k", "", True))
    assert ids(storage, "kafka redis") == ["r"]
    folder.fold(indexed("x", "redis alone"), indexed("y", "kafka alone"))
    scores = dict(storage.keyword("w1", query_terms("kafka redis"), Filters(), 50))
    assert scores["x"] == pytest.approx(scores["y"])  # each word now in two of three memories


def test_filters_hold_on_both_halves(storage: ServerStorage) -> None:
    rng = np.random.default_rng(7)
    base = rng.standard_normal(INDEX_DIM)
    rows: list[IndexedMemory] = []
    for n in range(40):
        vector = base + 0.1 * rng.standard_normal(INDEX_DIM)
        rows.append(
            indexed(
                f"m{n}",
                f"retry budget note {n}",
                vector / np.linalg.norm(vector),
                project=("api", "web")[n % 2],
                kind=("note", "decision")[n % 4 // 2],
                tags=("ops",) if n % 5 == 0 else (),
            )
        )
    Folder(storage).fold(*rows)
    by_id = {r.memory.id: r.memory for r in rows}
    query = (base / np.linalg.norm(base)).astype("<f4").tobytes()
    cases: Sequence[Filters] = (
        Filters(project="api"),
        Filters(project="web", kinds=("decision",)),
        Filters(tags=("ops",)),
        Filters(project="nowhere"),
    )
    for filters in cases:
        expected = {
            m.id
            for m in by_id.values()
            if (filters.project is None or m.project == filters.project)
            and (not filters.kinds or m.kind in filters.kinds)
            and set(filters.tags) <= set(m.tags)
        }
        near = [m for m, _ in storage.nearest("w1", query, filters, 100)]
        words = ids(storage, "retry budget", filters)
        assert set(near) == expected == set(words), filters
    everything = storage.nearest("w1", query, Filters(), 100)
    assert len(everything) == 40
    assert [c for _, c in everything] == sorted((c for _, c in everything), reverse=True)


def test_the_vectors_in_memory_follow_every_fold(storage: ServerStorage) -> None:
    """The first search reads a workspace's vectors all at once; later ones apply what folds
    changed since (a forgotten memory leaves, a new one comes, an edited one moves)."""
    rng = np.random.default_rng(11)
    unit = [v / np.linalg.norm(v) for v in rng.standard_normal((4, INDEX_DIM))]
    folder = Folder(storage)
    folder.fold(*(indexed(f"m{n}", f"text {n}", unit[n], project=f"p{n % 2}") for n in range(3)))
    query = unit[0].astype("<f4").tobytes()
    assert [m for m, _ in storage.nearest("w1", query, Filters(), 10)][0] == "m0"
    assert {m for m, _ in storage.nearest("w1", query, Filters(project="p1"), 10)} == {"m1"}
    folder.fold(indexed("m0", "", deleted=True), indexed("m1", "moved", unit[3], project="p1"))
    folder.fold(indexed("m3", "new", unit[0], project="p1"))
    near = storage.nearest("w1", query, Filters(), 10)
    assert [m for m, _ in near][0] == "m3" and "m0" not in {m for m, _ in near}
    moved = storage.nearest("w1", unit[3].astype("<f4").tobytes(), Filters(project="p1"), 10)
    assert moved[0][0] == "m1" and moved[0][1] == pytest.approx(1.0, abs=1e-5)
    assert {m for m, _ in moved} == {"m1", "m3"}


@pytest.mark.parametrize("how", ["deleted and imported again", "rebuilt from position 0"])
def test_the_vectors_in_memory_follow_an_index_that_started_again(
    storage: ServerStorage, how: str
) -> None:
    """A running server's vectors in memory are dropped when the index they copy starts again
    (its workspace deleted and imported with the same id, or its index rebuilt from 0, by
    another process), even when the new index reaches the very position the old one had."""
    rng = np.random.default_rng(5)
    old, new = (v / np.linalg.norm(v) for v in rng.standard_normal((2, INDEX_DIM)))
    folder = Folder(storage)
    folder.fold(indexed("stale", "the old memory", old), indexed("s2", "another", old))
    query = old.astype("<f4").tobytes()
    assert storage.nearest("w1", query, Filters(), 10)[0][0] == "stale"
    # Another process (the CLI, another worker) starts the index again.
    other: Any = type(storage)(storage.path)  # type: ignore[call-arg]
    try:
        if how == "deleted and imported again":
            workspace = other.workspace_by_id("w1")
            other.delete_workspace("w1", NOW, by="test")
            other.import_workspace(workspace, Quota(), 0, [], NOW, by="test")
        else:
            with other._write("w1") as conn:  # what a rebuild of the index starts with
                for table in ("hosted_memories", "hosted_relations", "hosted_index"):
                    conn.execute(f"DELETE FROM {table} WHERE workspace_id = ?", ("w1",))
        again = Folder(other)
        again.fold(indexed("fresh", "the new memory", new), indexed("f2", "another", new))
        assert again.position == folder.position
    finally:
        other.close()
    near = storage.nearest("w1", query, Filters(), 10)
    assert {m for m, _ in near} == {"fresh", "f2"}
    assert {m for m, _ in storage.nearest("w1", query, Filters(project="p"), 10)} == {
        "fresh",
        "f2",
    }
