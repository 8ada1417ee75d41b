"""A hosted workspace's vectors in the embedded server's memory, for exact cosine search."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from cairn.search.matrix import DenseMatrix
from cairn.server.storage.dialect import Conn
from cairn.server.storage.records import INDEX_DIM, Ranked


class HostedVectors:
    """One hosted workspace's vectors as a dense float32 matrix (as on a device:
    ``cairn.search.vector_index``). It follows the index by position: a refresh reads only the
    rows written since the last one, by this process or another."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows = DenseMatrix(INDEX_DIM)
        self._keys: dict[str, int] = {}  # memory id -> the matrix's key for it
        self._ids: list[str] = []  # key -> memory id
        self._seen = 0

    def refresh(self, conn: Conn, workspace_id: str) -> None:
        """Apply every index row written since the last refresh (in ``conn``'s snapshot)."""
        with self._lock:
            rows = conn.execute(
                "SELECT id, deleted, vector, position FROM hosted_memories "
                "WHERE workspace_id = ? AND position > ? ORDER BY position",
                (workspace_id, self._seen),
            ).fetchall()
            for memory_id, deleted, vector, position in rows:
                if deleted or vector is None or len(vector) != INDEX_DIM * 4:
                    if memory_id in self._keys:
                        self._rows.remove(self._keys[memory_id])
                else:
                    self._rows.put(self._key(memory_id), np.frombuffer(vector, dtype="<f4"))
                self._seen = max(self._seen, position)

    def search(
        self, query: npt.NDArray[np.float32], depth: int, allowed: Sequence[str] | None
    ) -> Ranked:
        """Up to ``depth`` (memory id, cosine), best first; only ``allowed`` ids when given."""
        with self._lock:
            if query.shape != (INDEX_DIM,):
                return []
            keys = None
            if allowed is not None:
                known = (self._keys[i] for i in allowed if i in self._keys)
                keys = np.fromiter(known, dtype=np.int64)
            return [(self._ids[key], score) for key, score in self._rows.search(query, depth, keys)]

    def _key(self, memory_id: str) -> int:
        key = self._keys.get(memory_id)
        if key is None:
            key = self._keys[memory_id] = len(self._ids)
            self._ids.append(memory_id)
        return key
