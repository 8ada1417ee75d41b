"""Exact cosine search over an in-memory float32 matrix derived from the store.

SQLite stays the source of truth. The index remembers the highest row ``seq`` it has seen and,
before each search, applies every row changed since (by this or any other process), so it is
never stale. Exact brute force was chosen over HNSW after measuring (bench/bench_vector.py): at
100k x 384 one matrix-vector product costs a few ms on 2 cores, it needs no tuning, recall is
exact, and filters are a cheap row subset.
"""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import numpy.typing as npt

from cairn.store import memories
from cairn.store.db import Database


class VectorIndex:
    """Safe to share between threads: refresh and search take turns under one lock."""

    def __init__(self, db: Database, model_id: str, dim: int) -> None:
        self._lock = threading.RLock()
        self._db = db
        self._model_id = model_id
        self._dim = dim
        self._matrix = np.zeros((0, dim), dtype=np.float32)
        self._rowids = np.zeros(0, dtype=np.int64)
        # Each row's project as a small code, so a project filter needs no SQL round trip.
        self._projects = np.zeros(0, dtype=np.int32)
        self._codes: dict[str, int] = {}
        self._size = 0
        self._pos = np.full(0, -1, dtype=np.int64)  # rowid -> row of the matrix, -1 if absent
        self._seq = 0

    def __len__(self) -> int:
        return self._size

    def refresh(self) -> None:
        """Catch up with every change committed to the store since the last refresh."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        with self._db.read() as conn:
            top = memories.max_seq(conn)
            if top == self._seq:
                return
            if self._seq == 0:
                self._bulk_load(conn)
            else:
                for rowid, deleted, project, model_id, vector in memories.changes_since(
                    conn, self._seq
                ):
                    if deleted or vector is None or model_id != self._model_id:
                        self._remove(rowid)
                    else:
                        self._put(rowid, np.frombuffer(vector, dtype="<f4"), project)
            self._seq = top  # read in the same snapshot as the rows

    def search(
        self,
        query: npt.NDArray[np.float32],
        k: int,
        allowed: npt.NDArray[np.int64] | None = None,
        project: str | None = None,
    ) -> list[tuple[int, float]]:
        """(rowid, cosine) of the k nearest rows, best first.

        ``allowed`` (rowids) or ``project`` restricts the rows searched.
        """
        with self._lock:
            if project is not None:
                code = self._codes.get(project)
                if code is None:
                    return []
                allowed = self._rowids[: self._size][self._projects[: self._size] == code]
            return self._search(query, k, allowed)

    def _search(
        self,
        query: npt.NDArray[np.float32],
        k: int,
        allowed: npt.NDArray[np.int64] | None,
    ) -> list[tuple[int, float]]:
        if self._size == 0 or k <= 0:
            return []
        if allowed is None:
            rowids = self._rowids[: self._size]
            scores = self._matrix[: self._size] @ query
        else:
            positions = self._pos[allowed[allowed < self._pos.size]]
            positions = positions[positions >= 0]
            if positions.size == 0:
                return []
            rowids = self._rowids[positions]
            scores = self._matrix[positions] @ query
        k = min(k, scores.size)
        top = np.argpartition(-scores, k - 1)[:k] if k < scores.size else np.arange(scores.size)
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(rowids[i]), float(scores[i])) for i in top]

    def _bulk_load(self, conn: sqlite3.Connection) -> None:
        """Load every vector of the model, streamed in pages straight into the matrix."""
        count = memories.count_vectors(conn, self._model_id)
        capacity = count + max(1024, count // 8)
        self._matrix = np.zeros((capacity, self._dim), dtype=np.float32)
        self._rowids = np.zeros(capacity, dtype=np.int64)
        self._projects = np.zeros(capacity, dtype=np.int32)
        self._size = 0
        # One read snapshot: the pages hold exactly `count` rows.
        for rows in memories.vector_pages(conn, self._model_id):
            end = self._size + len(rows)
            block = np.frombuffer(b"".join(v for _r, v, _p in rows), dtype="<f4")
            self._matrix[self._size : end] = block.reshape(len(rows), self._dim)
            self._rowids[self._size : end] = [r for r, _v, _p in rows]
            self._projects[self._size : end] = [self._code(p) for _r, _v, p in rows]
            self._size = end
        top = int(self._rowids[: self._size].max()) + 1 if self._size else 0
        self._pos = np.full(max(1024, top + top // 8), -1, dtype=np.int64)
        self._pos[self._rowids[: self._size]] = np.arange(self._size)

    def _code(self, project: str) -> int:
        return self._codes.setdefault(project, len(self._codes))

    def _put(self, rowid: int, vector: npt.NDArray[np.float32], project: str) -> None:
        if rowid >= self._pos.size:
            grown = np.full(max(1024, (rowid + 1) * 2), -1, dtype=np.int64)
            grown[: self._pos.size] = self._pos
            self._pos = grown
        pos = int(self._pos[rowid])
        if pos < 0:
            if self._size == len(self._rowids):
                grow = max(1024, self._size)
                self._matrix = np.vstack([self._matrix, np.zeros((grow, self._dim), np.float32)])
                self._rowids = np.concatenate([self._rowids, np.zeros(grow, np.int64)])
                self._projects = np.concatenate([self._projects, np.zeros(grow, np.int32)])
            pos = self._size
            self._size += 1
            self._pos[rowid] = pos
            self._rowids[pos] = rowid
        self._matrix[pos] = vector
        self._projects[pos] = self._code(project)

    def _remove(self, rowid: int) -> None:
        pos = int(self._pos[rowid]) if rowid < self._pos.size else -1
        if pos < 0:
            return
        self._pos[rowid] = -1
        last = self._size - 1
        if pos != last:  # move the last row into the hole
            moved = int(self._rowids[last])
            self._matrix[pos] = self._matrix[last]
            self._rowids[pos] = moved
            self._projects[pos] = self._projects[last]
            self._pos[moved] = pos
        self._size = last
