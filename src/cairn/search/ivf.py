"""An approximate vector index by integer key: faiss inverted lists (IVF) of float16 vectors.

A large store's vectors are grouped around ``lists`` centroids trained on a sample of them; a
search scores the centroids, then only the vectors in the ``probe`` nearest lists. Exact scan
costs grow with the store; this costs about ``probe / lists`` of it (bench/bench_peers.py
measures both, and the overlap of their top 10). Vectors are kept as float16, so a cosine is
within ~1e-3 of the exact one. Each row carries a small integer label (the device labels rows
by project), like ``DenseMatrix``; rows change in batches (``put_many``, ``remove_many``).
Not thread-safe: its owner takes turns under its own lock. faiss is imported on first use
(it takes ~0.2 s).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cairn.search.matrix import Page

MIN_ROWS = 20_000
"""Below this many rows an exact scan (``DenseMatrix``) is fast enough and needs no training."""
EXACT_SUBSET = 20_000
"""A search restricted to at most this many keys scans them exactly instead."""
PROBE = 160
"""Lists one search scans: the speed/recall knob. A count, not a share of the lists: the lists
grow finer with the store (``list_count``), so a share would scan ever more rows for the same
recall. 160 found 0.978 of the exact top 10 at 100k (1,264 lists, 2.4 ms) and all of it at 1M
(4,000 lists: 7.9 ms, where 8% of them took 14.4 ms; docs/performance.md)."""
MIN_PROBE = 16
TRAIN_PER_LIST = 40
"""Training sample per list: faiss warns below 39 points per centroid."""
TRAIN_ITERATIONS = 10
"""k-means rounds when training: at 100k, 10 rounds found the same recall@10 as faiss's default
25 (0.9615 against 0.96 at 8% probed) in 17 s against 46 s (bench_vector, loaded machine)."""
REBUILD_GROWTH = 4
"""Rebuild (train again) once the index holds this many times the rows it was trained on."""


def _faiss() -> Any:
    import faiss

    return faiss


def list_count(rows: int) -> int:
    """How many lists an index of ``rows`` vectors gets: four times the square root of the rows
    (finer lists found more of the exact top 10 per vector scanned, bench/bench_peers.py)."""
    return max(16, int(4 * math.sqrt(rows)))


class IvfRows:
    """Rows of ``dim`` float32 unit vectors by key, searched approximately.

    ``trained_on`` is how many rows the lists were trained on; ``stale`` says when the index has
    grown enough past it that its lists are too long and a rebuild pays off.
    """

    def __init__(self, dim: int, index: Any = None, labels: npt.NDArray[np.int32] | None = None):
        self.dim = dim
        self._index = index
        self._labels = labels if labels is not None else np.full(0, -1, dtype=np.int32)
        self.trained_on = int(index.ntotal) if index is not None else 0

    def __len__(self) -> int:
        return int(self._index.ntotal) if self._index is not None else 0

    @property
    def stale(self) -> bool:
        return len(self) > REBUILD_GROWTH * max(self.trained_on, MIN_ROWS)

    def load(self, count: int, pages: Callable[[], Iterable[Page]]) -> None:
        """Replace every row with the ``count`` rows ``pages()`` yields: a first pass draws an
        even training sample, a second adds every row (the rows are never all in memory as
        float32 at once)."""
        faiss = _faiss()
        lists = list_count(count)
        want = min(count, lists * TRAIN_PER_LIST)
        picks = np.sort(np.random.default_rng(count).choice(count, want, replace=False))
        sample, seen = [], 0
        for keys, vectors, _labels in pages():
            block = vectors.reshape(len(keys), self.dim)
            inside = picks[(picks >= seen) & (picks < seen + len(keys))] - seen
            sample.append(block[inside])
            seen += len(keys)
        index = faiss.index_factory(self.dim, f"IVF{lists},SQfp16", faiss.METRIC_INNER_PRODUCT)
        faiss.extract_index_ivf(index).by_residual = False
        faiss.extract_index_ivf(index).cp.niter = TRAIN_ITERATIONS
        index.train(np.concatenate(sample) if sample else np.zeros((0, self.dim), np.float32))
        faiss.extract_index_ivf(index).set_direct_map_type(faiss.DirectMap.Hashtable)
        self._index = index
        self._labels = np.full(1024, -1, dtype=np.int32)
        for keys, vectors, labels in pages():
            self.put_many(np.asarray(keys, np.int64), vectors.reshape(len(keys), self.dim), labels)
        self.trained_on = len(self)

    def put_many(
        self, keys: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32], labels: list[int]
    ) -> None:
        """Add these rows, replacing any row a key already has."""
        if not len(keys):
            return
        self.remove_many(keys)
        self._grow(int(keys.max()))
        self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), keys)
        self._labels[keys] = labels

    def remove_many(self, keys: npt.NDArray[np.int64]) -> None:
        """Drop the rows of ``keys`` (keys without a row are skipped)."""
        keys = keys[keys < self._labels.size]
        present = keys[self._labels[keys] >= 0]
        if present.size:
            self._index.remove_ids(present)
            self._labels[present] = -1

    def labelled(self, label: int) -> npt.NDArray[np.int64]:
        """The keys of the rows labelled ``label``."""
        return np.flatnonzero(self._labels == label).astype(np.int64)

    def search(
        self,
        query: npt.NDArray[np.float32],
        k: int,
        allowed: npt.NDArray[np.int64] | None = None,
        share: float | None = None,
    ) -> list[tuple[int, float]]:
        """(key, cosine) of about the ``k`` rows nearest ``query``, best first; only the rows of
        ``allowed`` keys when given (a small subset is scanned exactly). ``share`` of the lists
        are probed when given (at least ``MIN_PROBE`` lists), else ``PROBE`` lists."""
        if not len(self) or k <= 0:
            return []
        faiss = _faiss()
        faiss.omp_set_num_threads(1)  # one query: threads only add overhead beside onnxruntime
        ivf = faiss.extract_index_ivf(self._index)
        probe = PROBE if share is None else max(MIN_PROBE, math.ceil(ivf.nlist * share))
        params = None
        if allowed is not None:
            allowed = allowed[allowed < self._labels.size]
            allowed = allowed[self._labels[allowed] >= 0]
            if allowed.size <= EXACT_SUBSET:
                return self._exact(query, k, allowed)
            # A sparse subset fills fewer of the probed lists: probe more of them.
            probe = math.ceil(probe * len(self) / allowed.size)
            params = faiss.SearchParametersIVF(sel=faiss.IDSelectorBatch(allowed))
        params = params or faiss.SearchParametersIVF()
        params.nprobe = min(ivf.nlist, probe)
        scores, keys = self._index.search(query.reshape(1, self.dim), k, params=params)
        return [(int(key), float(s)) for key, s in zip(keys[0], scores[0], strict=True) if key >= 0]

    def sample(
        self, count: int, seed: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Up to ``count`` keys drawn at random, and their vectors as the index holds them."""
        keys = np.flatnonzero(self._labels >= 0).astype(np.int64)
        picks = np.random.default_rng(seed).choice(keys, min(count, keys.size), replace=False)
        return picks, self._index.reconstruct_batch(picks)

    def _exact(
        self, query: npt.NDArray[np.float32], k: int, keys: npt.NDArray[np.int64]
    ) -> list[tuple[int, float]]:
        if not keys.size:
            return []
        scores = self._index.reconstruct_batch(keys) @ query
        k = min(k, scores.size)
        top = np.argpartition(-scores, k - 1)[:k] if k < scores.size else np.arange(scores.size)
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(keys[i]), float(scores[i])) for i in top]

    def _grow(self, key: int) -> None:
        if key >= self._labels.size:
            grown = np.full(max(1024, (key + 1) * 2), -1, dtype=np.int32)
            grown[: self._labels.size] = self._labels
            self._labels = grown

    # --- files ---------------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """Write the index and labels into ``folder`` (the caller holds the folder's lock and
        records what they cover)."""
        faiss = _faiss()
        faiss.write_index(self._index, str(folder / "ivf.faiss"))
        np.save(folder / "labels.npy", self._labels)

    @classmethod
    def read(cls, folder: Path, dim: int, trained_on: int) -> IvfRows:
        """The index ``save`` wrote into ``folder``; ValueError if it is not one of ``dim``."""
        faiss = _faiss()
        index = faiss.read_index(str(folder / "ivf.faiss"))
        labels = np.load(folder / "labels.npy", allow_pickle=False)
        if index.d != dim or labels.dtype != np.int32 or labels.ndim != 1:
            raise ValueError(f"{folder} holds an index of another shape")
        if int((labels >= 0).sum()) != index.ntotal:
            raise ValueError(f"{folder} holds labels that do not match its index")
        rows = cls(dim, index, labels)
        rows.trained_on = trained_on
        return rows
