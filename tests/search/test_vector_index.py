"""The device's vector index over a big store: inverted lists, saved beside the store, caught up
by ``seq`` in every process, and rebuilt when the saved copy does not belong to the store.

The size at which a store switches to inverted lists is lowered so a test store of a few
hundred memories uses them (the same code runs as at 20k); vectors are random unit vectors
stored with ``remember_embedded``, each searched for by itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.memory_rules import NewMemory
from cairn.model import Filters
from cairn.search import ivf
from cairn.store.db import Database

ROWS = 640


@pytest.fixture(autouse=True)
def small_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ivf, "MIN_ROWS", 400)
    monkeypatch.setattr(ivf, "EXACT_SUBSET", 50)


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def open_store(path: Path, embedder: OnnxEmbedder) -> Store:
    return Store(Database(path), embedder, project="test")


@pytest.fixture
def big(tmp_path: Path, embedder: OnnxEmbedder) -> Iterator[tuple[Path, np.ndarray, list[str]]]:
    """A closed store of ROWS memories in two projects, and their vectors and ids."""
    vectors = unit(np.random.default_rng(7), ROWS, embedder.dim)
    items = [
        NewMemory(f"memory number {i}", project="even" if i % 2 == 0 else "odd")
        for i in range(ROWS)
    ]
    path = tmp_path / "cairn.db"
    with open_store(path, embedder) as store:
        ids = [r.memory.id for r in store.remember_embedded(items, vectors)]
        store.index.refresh()
        assert store.index.approximate
    yield path, vectors, ids


def nearest(store: Store, vector: np.ndarray, project: str | None = None) -> list[int]:
    store.index.refresh()
    return [rowid for rowid, _ in store.index.search(vector, 5, project=project)]


def rowid_of(store: Store, memory_id: str) -> int:
    with store.db.read() as conn:
        row = conn.execute("SELECT rowid FROM memories WHERE id = ?", (memory_id,)).fetchone()
        return int(row[0])


def test_each_vector_finds_itself_and_the_index_is_saved(big, embedder) -> None:
    path, vectors, ids = big
    meta = json.loads((Path(f"{path}.vectors") / "meta.json").read_text())
    assert meta["rows"] == ROWS and meta["model_id"] == embedder.model_id
    with open_store(path, embedder) as store:
        store.index.refresh()
        assert store.index.approximate and len(store.index) == ROWS
        pairs = zip(vectors, ids, strict=True)
        found = [nearest(store, v)[0] == rowid_of(store, i) for v, i in pairs]
        assert sum(found) / ROWS >= 0.99
        assert store.index.search(vectors[0], 1)[0][1] == pytest.approx(1.0, abs=2e-3)


def test_a_new_process_reads_the_saved_index_instead_of_building(big, embedder, caplog) -> None:
    path, _vectors, _ids = big
    caplog.set_level(logging.INFO, logger="cairn.search.vector_index")
    with open_store(path, embedder) as store:
        store.index.refresh()
        assert store.index.approximate
    assert not [r for r in caplog.records if "building" in r.getMessage()]


def test_changes_made_after_the_save_are_caught_up(big, embedder) -> None:
    path, vectors, ids = big
    extra = unit(np.random.default_rng(8), 3, embedder.dim)
    with open_store(path, embedder) as writer:  # another process writes; nothing refreshes
        writer.forget(ids[0])
        added = writer.remember_embedded([NewMemory(f"new {i}") for i in range(3)], extra)
        moved = writer.remember_embedded([NewMemory("memory number 1 again")], vectors[1:2])
    with open_store(path, embedder) as store:
        store.index.refresh()
        assert len(store.index) == ROWS - 1 + 4
        assert rowid_of(store, ids[0]) not in nearest(store, vectors[0])
        for result, vector in zip(added, extra, strict=True):
            assert nearest(store, vector)[0] == rowid_of(store, result.memory.id)
        both = set(nearest(store, vectors[1])[:2])
        assert both == {rowid_of(store, ids[1]), rowid_of(store, moved[0].memory.id)}


def test_a_saved_index_that_does_not_fit_the_store_is_rebuilt(big, embedder, caplog) -> None:
    path, vectors, ids = big
    folder = Path(f"{path}.vectors")
    meta = json.loads((folder / "meta.json").read_text())
    meta["seq"] = meta["seq"] + 1000  # says it covers writes the store never had
    (folder / "meta.json").write_text(json.dumps(meta))
    caplog.set_level(logging.INFO, logger="cairn.search.vector_index")
    with open_store(path, embedder) as store:
        assert nearest(store, vectors[3])[0] == rowid_of(store, ids[3])
    assert [r for r in caplog.records if "building" in r.getMessage()]
    (folder / "ivf.faiss").write_bytes(b"not an index")
    with open_store(path, embedder) as store:
        assert nearest(store, vectors[5])[0] == rowid_of(store, ids[5])
    assert json.loads((folder / "meta.json").read_text())["rows"] == ROWS


def test_filters_search_only_their_rows(big, embedder) -> None:
    path, vectors, ids = big
    with open_store(path, embedder) as store:
        store.index.refresh()
        even = {rowid_of(store, i) for i in ids[::2]}
        assert set(nearest(store, vectors[1], project="even")) <= even
        assert nearest(store, vectors[2], project="even")[0] == rowid_of(store, ids[2])
        small = np.array(sorted(even)[:10], dtype=np.int64)  # scanned exactly
        assert {r for r, _ in store.index.search(vectors[0], 20, allowed=small)} == set(small)
        hits = store.recall("memory number 4", Filters(project="odd"))
        assert hits and {h.memory.project for h in hits} == {"odd"}


def test_a_small_store_switches_to_lists_as_it_grows(tmp_path, embedder) -> None:
    vectors = unit(np.random.default_rng(9), 450, embedder.dim)
    with open_store(tmp_path / "cairn.db", embedder) as store:
        first = store.remember_embedded([NewMemory(f"m {i}") for i in range(300)], vectors[:300])
        store.index.refresh()
        assert not store.index.approximate
        store.remember_embedded([NewMemory(f"m {i}") for i in range(300, 450)], vectors[300:])
        store.index.refresh()
        assert store.index.approximate and len(store.index) == 450
        assert nearest(store, vectors[0])[0] == rowid_of(store, first[0].memory.id)


def test_a_store_replaced_by_another_of_the_same_size_is_not_served_the_old_index(
    big, embedder, tmp_path, caplog
) -> None:
    path, _vectors, _ids = big
    other_vectors = unit(np.random.default_rng(11), ROWS, embedder.dim)
    other = tmp_path / "other" / "cairn.db"
    with open_store(other, embedder) as store:  # same rows, same seq, other vectors
        items = [NewMemory(f"other memory {i}") for i in range(ROWS)]
        other_ids = [r.memory.id for r in store.remember_embedded(items, other_vectors)]
    path.unlink()
    other.rename(path)  # say, a store restored from elsewhere; the old index stays beside it
    caplog.set_level(logging.INFO, logger="cairn.search.vector_index")
    with open_store(path, embedder) as store:
        assert nearest(store, other_vectors[7])[0] == rowid_of(store, other_ids[7])
    assert [r for r in caplog.records if "building" in r.getMessage()]


def test_a_close_only_search_still_finds_near_copies(big, embedder) -> None:
    path, vectors, ids = big
    rng = np.random.default_rng(12)
    with open_store(path, embedder) as store:
        store.index.refresh()
        for i in range(0, ROWS, 40):
            near = vectors[i] + rng.normal(0, 0.01, embedder.dim).astype(np.float32)
            near /= np.linalg.norm(near)
            top = store.index.search(near, 10, close_only=True)
            assert top[0][0] == rowid_of(store, ids[i]) and top[0][1] > 0.92


def test_prepare_builds_and_saves_the_index_so_the_next_process_reads_it(
    tmp_path, embedder, caplog
) -> None:
    path = tmp_path / "cairn.db"
    vectors = unit(np.random.default_rng(9), ROWS, embedder.dim)
    with open_store(path, embedder) as store:  # as an import leaves it: nothing searched yet
        ids = [
            r.memory.id
            for r in store.remember_embedded([NewMemory(f"m {i}") for i in range(ROWS)], vectors)
        ]
        assert store.index.prepare()
        with store.db.read() as conn:
            top = conn.execute("SELECT max(seq) FROM memories").fetchone()[0]
    meta = json.loads((Path(f"{path}.vectors") / "meta.json").read_text())
    assert (meta["rows"], meta["seq"]) == (ROWS, top)
    caplog.set_level(logging.INFO, logger="cairn.search.vector_index")
    with open_store(path, embedder) as store:
        assert nearest(store, vectors[4])[0] == rowid_of(store, ids[4])
    assert not [r for r in caplog.records if "building" in r.getMessage()]


def test_prepare_saves_nothing_for_a_store_scanned_exactly(tmp_path, embedder) -> None:
    path = tmp_path / "cairn.db"
    with open_store(path, embedder) as store:
        store.remember_embedded(
            [NewMemory(f"m {i}") for i in range(10)], unit(np.random.default_rng(3), 10, 384)
        )
        assert not store.index.prepare()
        assert len(store.index) == 10 and not store.index.approximate
    assert not Path(f"{path}.vectors").exists()
