"""A dense float32 matrix of vectors by integer key, for exact top-k cosine search.

The device's vector index (``cairn.search.vector_index``) and a hosted workspace's on the
embedded server (``cairn.server.storage.hosted_vectors``) both keep one. Rows hold unit
vectors, so a dot product is the cosine. Each row may carry a small integer label (the device
labels rows by project) so a filter by label needs no database round trip. Not thread-safe:
its owner takes turns under its own lock.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

Page = tuple[list[int], npt.NDArray[np.float32], list[int]]
"""Rows to load at once: their keys, their vectors (one per row) and their labels."""


class DenseMatrix:
    """Vectors of ``dim`` float32 values, one row per key; removing a row moves the last into
    its place, so the rows in use are always the first ``len(self)``."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._matrix = np.zeros((0, dim), dtype=np.float32)
        self._keys = np.zeros(0, dtype=np.int64)
        self._labels = np.zeros(0, dtype=np.int32)
        self._size = 0
        self._pos = np.full(0, -1, dtype=np.int64)  # key -> row, -1 if absent

    def __len__(self) -> int:
        return self._size

    def load(self, count: int, pages: Iterable[Page]) -> None:
        """Replace every row with ``count`` rows read in ``pages`` (the first load of a big
        index: straight into a matrix of the right size, no row at a time)."""
        capacity = count + max(1024, count // 8)
        self._matrix = np.zeros((capacity, self.dim), dtype=np.float32)
        self._keys = np.zeros(capacity, dtype=np.int64)
        self._labels = np.zeros(capacity, dtype=np.int32)
        self._size = 0
        for keys, vectors, labels in pages:
            end = self._size + len(keys)
            self._matrix[self._size : end] = vectors.reshape(len(keys), self.dim)
            self._keys[self._size : end] = keys
            self._labels[self._size : end] = labels
            self._size = end
        top = int(self._keys[: self._size].max()) + 1 if self._size else 0
        self._pos = np.full(max(1024, top + top // 8), -1, dtype=np.int64)
        self._pos[self._keys[: self._size]] = np.arange(self._size)

    def put(self, key: int, vector: npt.NDArray[np.float32], label: int = 0) -> None:
        """Add the row of ``key``, or replace its vector and label."""
        if key >= self._pos.size:
            grown = np.full(max(1024, (key + 1) * 2), -1, dtype=np.int64)
            grown[: self._pos.size] = self._pos
            self._pos = grown
        pos = int(self._pos[key])
        if pos < 0:
            if self._size == len(self._keys):
                grow = max(1024, self._size)
                self._matrix = np.vstack([self._matrix, np.zeros((grow, self.dim), np.float32)])
                self._keys = np.concatenate([self._keys, np.zeros(grow, np.int64)])
                self._labels = np.concatenate([self._labels, np.zeros(grow, np.int32)])
            pos = self._size
            self._size += 1
            self._pos[key] = pos
            self._keys[pos] = key
        self._matrix[pos] = vector
        self._labels[pos] = label

    def remove(self, key: int) -> None:
        """Drop the row of ``key`` (none: nothing to do)."""
        pos = int(self._pos[key]) if key < self._pos.size else -1
        if pos < 0:
            return
        self._pos[key] = -1
        last = self._size - 1
        if pos != last:  # move the last row into the hole
            moved = int(self._keys[last])
            self._matrix[pos] = self._matrix[last]
            self._keys[pos] = moved
            self._labels[pos] = self._labels[last]
            self._pos[moved] = pos
        self._size = last

    def labelled(self, label: int) -> npt.NDArray[np.int64]:
        """The keys of the rows labelled ``label``."""
        keys: npt.NDArray[np.int64] = self._keys[: self._size][self._labels[: self._size] == label]
        return keys

    def search(
        self,
        query: npt.NDArray[np.float32],
        k: int,
        allowed: npt.NDArray[np.int64] | None = None,
    ) -> list[tuple[int, float]]:
        """(key, cosine) of the ``k`` rows nearest ``query``, best first; only the rows of
        ``allowed`` keys when given (keys without a row are skipped)."""
        if self._size == 0 or k <= 0:
            return []
        if allowed is None:
            keys = self._keys[: self._size]
            scores = self._matrix[: self._size] @ query
        else:
            positions = self._pos[allowed[allowed < self._pos.size]]
            positions = positions[positions >= 0]
            if positions.size == 0:
                return []
            keys = self._keys[positions]
            scores = self._matrix[positions] @ query
        k = min(k, scores.size)
        top = np.argpartition(-scores, k - 1)[:k] if k < scores.size else np.arange(scores.size)
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(keys[i]), float(scores[i])) for i in top]
