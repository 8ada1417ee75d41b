"""A hosted workspace's vectors in the server process's memory, for exact cosine search."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from cairn.search.matrix import DenseMatrix
from cairn.server.storage.records import INDEX_DIM, Ranked

VectorRow = tuple[str, bool, bytes | None, int, str]
"""An index row as the cache reads it: memory id, deleted, float32 vector, position, project."""


class HostedVectors:
    """One hosted workspace's vectors as a dense float32 matrix (as on a device:
    ``cairn.search.vector_index``), each row labelled by its project so a recall within one
    project needs no database round trip. It follows the index by position: a refresh applies
    only the rows written since the last one, by this process or another."""

    def __init__(self, generation: str = "") -> None:
        self.generation = generation
        """The generation of the index these vectors copy (``HostedIndex._vectors_at``)."""
        self._lock = threading.Lock()
        self._rows = DenseMatrix(INDEX_DIM)
        self._keys: dict[str, int] = {}  # memory id -> the matrix's key for it
        self._ids: list[str] = []  # key -> memory id
        self._projects: dict[str, int] = {}  # project -> label
        self.seen = 0
        """The highest index position applied."""

    def apply(self, rows: Iterable[VectorRow]) -> None:
        """Apply index rows read in position order from one snapshot. Rows at or below the
        position already applied are skipped: a recall that read an older snapshot than
        another's, and applies after it, must not put back older states."""
        with self._lock:
            self._apply(rows)

    def _apply(self, rows: Iterable[VectorRow]) -> None:
        floor = self.seen
        if not self._ids:  # the first read of a workspace: its rows at once, not one by one
            rows = list(rows)
            self._load([row for row in rows if row[3] > floor])
            self.seen = max((row[3] for row in rows), default=floor)
            return
        for memory_id, deleted, vector, position, project in rows:
            if position <= floor:
                continue
            if deleted or vector is None or len(vector) != INDEX_DIM * 4:
                if memory_id in self._keys:
                    self._rows.remove(self._keys[memory_id])
            else:
                label = self._projects.setdefault(project, len(self._projects) + 1)
                row = np.frombuffer(vector, dtype="<f4")
                self._rows.put(self._key(memory_id), row, label)
            self.seen = max(self.seen, position)

    def _load(self, rows: Sequence[VectorRow]) -> None:
        """Fill the empty matrix with the live rows among ``rows`` (one per memory)."""
        live = [r for r in rows if not r[1] and r[2] is not None and len(r[2]) == INDEX_DIM * 4]
        keys = [self._key(memory_id) for memory_id, *_ in live]
        labels = [self._projects.setdefault(r[4], len(self._projects) + 1) for r in live]
        vectors = np.frombuffer(b"".join(r[2] or b"" for r in live), dtype="<f4")
        self._rows.load(len(live), [(keys, vectors, labels)])

    def search(
        self,
        query: npt.NDArray[np.float32],
        depth: int,
        allowed: Sequence[str] | None = None,
        project: str | None = None,
    ) -> Ranked:
        """Up to ``depth`` (memory id, cosine), best first; only ``allowed`` ids when given,
        only ``project``'s when given."""
        if query.shape != (INDEX_DIM,):
            return []
        with self._lock:
            return self._search(query, depth, allowed, project)

    def _search(
        self,
        query: npt.NDArray[np.float32],
        depth: int,
        allowed: Sequence[str] | None,
        project: str | None,
    ) -> Ranked:
        keys = None
        if allowed is not None:
            known = (self._keys[i] for i in allowed if i in self._keys)
            keys = np.fromiter(known, dtype=np.int64)
        elif project is not None:
            keys = self._rows.labelled(self._projects.get(project, 0))
        return [(self._ids[key], score) for key, score in self._rows.search(query, depth, keys)]

    def _key(self, memory_id: str) -> int:
        key = self._keys.get(memory_id)
        if key is None:
            key = self._keys[memory_id] = len(self._ids)
            self._ids.append(memory_id)
        return key
