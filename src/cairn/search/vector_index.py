"""The device's vector index: its store's vectors in memory, kept in step with the store.

SQLite stays the source of truth. The index remembers the highest row ``seq`` it has seen and,
before each search, applies every row changed since (by this or any other process), so it is
never stale. A small store is searched exactly (``DenseMatrix``: at 20k x 384 one matrix-vector
product costs well under a millisecond); from ``ivf.MIN_ROWS`` vectors up the index is faiss
inverted lists (``IvfRows``), trained once and saved beside the store in ``<store>.vectors/``
with the ``seq`` it covers, so a new process reads it and applies only what changed since.
That folder is a cache: deleting it costs one rebuild. It is trusted only when its model, shape
and row count agree with the store after catching up and a few rows drawn at random hold the
store's own vectors; otherwise the index is built again.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cairn.search import ivf
from cairn.search.ivf import IvfRows
from cairn.search.matrix import DenseMatrix, Page
from cairn.store import memories
from cairn.store.db import Database

log = logging.getLogger(__name__)

Change = tuple[int, bool, str, str | None, bytes | None]
"""A changed row: (rowid, deleted, project, model_id, vector)."""
FORMAT = 1
SAVE_AFTER = 2_000
"""Changes applied since the last save after which the index is saved again."""
SPOT_CHECKS = 16
"""Rows of a saved index compared with the store's own vectors before it is trusted."""

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no saved index, each process builds its own
    fcntl = None  # type: ignore[assignment]


class VectorIndex:
    """Safe to share between threads: refresh and search take turns under one lock."""

    def __init__(self, db: Database, model_id: str, dim: int) -> None:
        self._lock = threading.RLock()
        self._db = db
        self._model_id = model_id
        self._dim = dim
        self.folder = Path(f"{db.path}.vectors")
        # Rows keyed by the memory's rowid, labelled by its project as a small code, so a
        # project filter needs no SQL round trip.
        self._rows: DenseMatrix | IvfRows = DenseMatrix(dim)
        self._codes: dict[str, int] = {}
        self._seq = 0
        self._unsaved = 0

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def approximate(self) -> bool:
        """Whether searches use the inverted lists (rather than an exact scan)."""
        return isinstance(self._rows, IvfRows)

    def refresh(self) -> None:
        """Catch up with every change committed to the store since the last refresh."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        with self._db.read() as conn:
            top = memories.max_seq(conn)
            if top == self._seq:
                return
            if self._seq == 0 or self._seq > top:  # first use, or the store went back in time
                self._open(conn, top)
            else:
                self._apply(memories.changes_since(conn, self._seq))
                self._seq = top  # read in the same snapshot as the rows
                count = len(self._rows)
                grown = isinstance(self._rows, DenseMatrix) and count >= ivf.MIN_ROWS
                if grown or (isinstance(self._rows, IvfRows) and self._rows.stale):
                    self._build(conn, top)
        if self._unsaved >= SAVE_AFTER:
            self.save()

    def search(
        self,
        query: npt.NDArray[np.float32],
        k: int,
        allowed: npt.NDArray[np.int64] | None = None,
        project: str | None = None,
        close_only: bool = False,
    ) -> list[tuple[int, float]]:
        """(rowid, cosine) of the k nearest rows, best first.

        ``allowed`` (rowids) or ``project`` restricts the rows searched. ``close_only`` is for
        callers that keep only rows very close to ``query`` (near-duplicates): the inverted
        lists then probe only the few lists nearest it, which hold such rows.
        """
        with self._lock:
            if project is not None:
                code = self._codes.get(project)
                if code is None:
                    return []
                allowed = self._rows.labelled(code)
            if isinstance(self._rows, IvfRows):
                return self._rows.search(query, k, allowed, 0.0 if close_only else None)
            return self._rows.search(query, k, allowed)

    def prepare(self) -> bool:
        """Catch up with the store now and save the result; whether that made a saved index
        (inverted lists, from ``ivf.MIN_ROWS`` vectors up). After a large import, the next
        process to recall then reads a ready index instead of training one (minutes at 1M)."""
        with self._lock:
            self._refresh()
            if self._unsaved:
                self.save()
            return isinstance(self._rows, IvfRows)

    def close(self) -> None:
        """Save the index if it holds changes its saved copy lacks."""
        with self._lock:
            if self._unsaved:
                self.save()

    # --- loading -----------------------------------------------------------------------------

    def _open(self, conn: sqlite3.Connection, top: int) -> None:
        """Read the saved index and catch it up, or build the index from the store."""
        self._codes, self._unsaved = {}, 0
        saved = self._read(top)
        if saved is not None:
            rows, seq = saved
            self._rows = rows
            self._apply(memories.changes_since(conn, seq))
            self._seq = top
            fits = len(rows) == memories.count_vectors(conn, self._model_id)
            if fits and not rows.stale and self._agrees(conn, rows):
                return
            log.warning("the saved vector index in %s disagrees with the store", self.folder)
        self._build(conn, top)

    def _agrees(self, conn: sqlite3.Connection, rows: IvfRows) -> bool:
        """Whether a few rows drawn at random hold the vectors the store has under their keys
        (a store replaced by another, say a repaired one, can match in counts alone)."""
        keys, held = rows.sample(SPOT_CHECKS, seed=len(rows))
        stored = memories.vectors_of(conn, self._model_id, keys.tolist())
        return all(
            int(key) in stored
            and np.allclose(np.frombuffer(stored[int(key)], dtype="<f4"), vector, atol=2e-3)
            for key, vector in zip(keys, held, strict=True)
        )

    def _build(self, conn: sqlite3.Connection, top: int) -> None:
        """Load every vector of the model; over ``ivf.MIN_ROWS`` of them, train inverted lists
        and save them."""
        count = memories.count_vectors(conn, self._model_id)
        codes = self._codes

        def pages() -> Iterator[Page]:  # one read snapshot: the pages hold exactly `count` rows
            for rows in memories.vector_pages(conn, self._model_id):
                yield (
                    [r for r, _v, _p in rows],
                    np.frombuffer(b"".join(v for _r, v, _p in rows), dtype="<f4"),
                    [codes.setdefault(p, len(codes)) for _r, _v, p in rows],
                )

        if count < ivf.MIN_ROWS:
            dense = DenseMatrix(self._dim)
            dense.load(count, pages())
            self._rows, self._seq = dense, top
            return
        started = time.perf_counter()
        log.info("building the vector index of %d memories in %s", count, self.folder)
        lists = IvfRows(self._dim)
        lists.load(count, pages)
        self._rows, self._seq = lists, top
        log.info("built the vector index in %.1f s", time.perf_counter() - started)
        self.save()

    def _apply(self, changes: list[Change]) -> None:
        live: list[Change] = []
        dropped: list[Change] = []
        for change in changes:
            _rowid, deleted, _project, model_id, vector = change
            keep = not deleted and vector is not None and model_id == self._model_id
            (live if keep else dropped).append(change)
        gone = np.array([c[0] for c in dropped], dtype=np.int64)
        if isinstance(self._rows, IvfRows):
            self._rows.remove_many(gone)
            keys = np.array([c[0] for c in live], dtype=np.int64)
            vectors = np.frombuffer(b"".join(c[4] or b"" for c in live), dtype="<f4")
            labels = [self._code(c[2]) for c in live]
            self._rows.put_many(keys, vectors.reshape(len(live), self._dim), labels)
        else:
            for rowid in gone:
                self._rows.remove(int(rowid))
            for rowid, _deleted, project, _model, vector in live:
                vec = np.frombuffer(vector or b"", dtype="<f4")
                self._rows.put(rowid, vec, self._code(project))
        self._unsaved += len(changes)

    def _code(self, project: str) -> int:
        return self._codes.setdefault(project, len(self._codes))

    # --- the saved copy ------------------------------------------------------------------------

    def save(self) -> None:
        """Write the inverted lists and what they cover into ``folder`` (nothing for a small
        store, whose exact matrix is rebuilt in moments). A copy covering a later ``seq`` than
        this one (saved by another process) is kept."""
        rows = self._rows
        if not isinstance(rows, IvfRows) or fcntl is None:
            self._unsaved = 0
            return
        try:
            self.folder.mkdir(exist_ok=True)
            with self._folder_lock(exclusive=True):
                meta = self._meta()
                if meta is not None and meta.get("seq", 0) > self._seq:
                    return
                (self.folder / "meta.json").unlink(missing_ok=True)  # unreadable while written
                rows.save(self.folder)
                meta = {
                    "format": FORMAT,
                    "model_id": self._model_id,
                    "dim": self._dim,
                    "seq": self._seq,
                    "rows": len(rows),
                    "trained_on": rows.trained_on,
                    "codes": self._codes,
                }
                part = self.folder / "meta.json.part"
                part.write_text(json.dumps(meta), encoding="utf-8")
                os.replace(part, self.folder / "meta.json")
            self._unsaved = 0
        except OSError as exc:  # a cache: a read-only or full disk costs a rebuild later
            log.warning("cannot save the vector index in %s: %s", self.folder, exc)

    def _read(self, top: int) -> tuple[IvfRows, int] | None:
        """The saved inverted lists and the ``seq`` they cover, if they belong to this store."""
        if fcntl is None or not (self.folder / "meta.json").is_file():
            return None
        try:
            with self._folder_lock(exclusive=False):
                meta = self._meta()
                if meta is None or not self._fits(meta, top):
                    return None
                rows = IvfRows.read(self.folder, self._dim, int(meta["trained_on"]))
        except (OSError, ValueError, RuntimeError) as exc:  # faiss raises RuntimeError
            log.warning("ignoring the saved vector index in %s: %s", self.folder, exc)
            return None
        codes = meta["codes"]
        self._codes = {str(p): int(c) for p, c in codes.items()}
        return rows, int(meta["seq"])

    def _fits(self, meta: dict[str, Any], top: int) -> bool:
        codes = meta.get("codes")
        return (
            meta.get("format") == FORMAT
            and meta.get("model_id") == self._model_id
            and meta.get("dim") == self._dim
            and isinstance(meta.get("seq"), int)
            and 0 < meta["seq"] <= top
            and isinstance(meta.get("trained_on"), int)
            and isinstance(codes, dict)
            and all(isinstance(c, int) and 0 <= c < 2**31 for c in codes.values())
        )

    def _meta(self) -> dict[str, Any] | None:
        try:
            meta = json.loads((self.folder / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    @contextmanager
    def _folder_lock(self, exclusive: bool) -> Iterator[None]:
        with open(self.folder / "lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
