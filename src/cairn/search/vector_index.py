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

from cairn.search.matrix import DenseMatrix
from cairn.store import memories
from cairn.store.db import Database


class VectorIndex:
    """Safe to share between threads: refresh and search take turns under one lock."""

    def __init__(self, db: Database, model_id: str, dim: int) -> None:
        self._lock = threading.RLock()
        self._db = db
        self._model_id = model_id
        self._dim = dim
        # Rows keyed by the memory's rowid, labelled by its project as a small code, so a
        # project filter needs no SQL round trip.
        self._rows = DenseMatrix(dim)
        self._codes: dict[str, int] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._rows)

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
                        self._rows.remove(rowid)
                    else:
                        vec = np.frombuffer(vector, dtype="<f4")
                        self._rows.put(rowid, vec, self._code(project))
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
                allowed = self._rows.labelled(code)
            return self._rows.search(query, k, allowed)

    def _bulk_load(self, conn: sqlite3.Connection) -> None:
        """Load every vector of the model, streamed in pages straight into the matrix."""
        count = memories.count_vectors(conn, self._model_id)
        # One read snapshot: the pages hold exactly `count` rows.
        pages = (
            (
                [r for r, _v, _p in rows],
                np.frombuffer(b"".join(v for _r, v, _p in rows), dtype="<f4"),
                [self._code(p) for _r, _v, p in rows],
            )
            for rows in memories.vector_pages(conn, self._model_id)
        )
        self._rows.load(count, pages)

    def _code(self, project: str) -> int:
        return self._codes.setdefault(project, len(self._codes))
