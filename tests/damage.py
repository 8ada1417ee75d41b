"""Stores with damaged pages, as a failing disk or a crash mid-copy leaves them.

``fill`` writes a few hundred memories (with relations) through the store's own code; their
vectors are seeded random unit vectors of the real model's size and id (embedding hundreds of
texts would cost this machine half a minute; nothing here ranks by meaning). ``damage``
overwrites every third page of the middle of the file with random bytes, so each b-tree of the
store (rows, vectors, keyword index, indexes) loses some pages, while the header stays intact.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import numpy as np

from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.memory_rules import NewMemory
from cairn.store.db import Database

COUNT = 200


def fill(path: Path, embedder: OnnxEmbedder, count: int = COUNT, project: str = "shop") -> None:
    """``count`` memories in the store at ``path``: every other one on one of 30 topics (so
    topic chains make ``supersedes`` relations), three tags, two kinds."""
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((count, embedder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = [
        NewMemory(
            content=f"Memory {i}: service s{i % 17} listens on port {8000 + i}; "
            f"the team settled on option {i % 5} after incident INC-{1000 + i}. "
            + "detail "
            * (i % 9),
            kind="decision" if i % 4 == 0 else "fact",
            tags=(f"tag{i % 3}",),
            topic_key=f"topic-{i % 30}" if i % 2 else None,
            created_at=1_700_000_000_000 + i * 1000,
        )
        for i in range(count)
    ]
    with Store(Database(path), embedder, project=project) as store:
        store.remember_embedded(items, vectors)


def contents(path: Path) -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """id -> (content, kind, tags) of every live memory in a healthy store file."""
    conn = sqlite3.connect(path)
    try:
        tags: dict[int, list[str]] = {}
        for rowid, tag in conn.execute("SELECT memory_rowid, tag FROM memory_tags"):
            tags.setdefault(rowid, []).append(tag)
        return {
            r[1]: (r[2], r[3], tuple(sorted(tags.get(r[0], ()))))
            for r in conn.execute("SELECT rowid, id, content, kind FROM memories WHERE deleted = 0")
        }
    finally:
        conn.close()


def damage(path: Path, seed: int = 1) -> list[int]:
    """Overwrite every third page between 20 % and 95 % of the file with random bytes, and the
    page holding the newest memories (which `cairn list` reads first); returns the page numbers
    (1-based, as SQLite counts them). The store must be closed (its WAL checkpointed)."""
    assert not path.with_name(path.name + "-wal").exists(), "close the store first"
    conn = sqlite3.connect(path)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        newest = conn.execute(
            "SELECT max(pageno) FROM dbstat WHERE name = 'memories' AND pagetype = 'leaf'"
        ).fetchone()[0]
    finally:
        conn.close()
    hit = sorted({*range(max(2, pages // 5), pages * 95 // 100, 3), newest})
    rnd = random.Random(seed)
    with path.open("r+b") as fh:
        for number in hit:
            fh.seek((number - 1) * page_size)
            fh.write(rnd.randbytes(page_size))
    return hit
