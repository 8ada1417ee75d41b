"""Replicas for sync tests: separate store files sharing one real embedder and one remote."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cairn.crypto.keyring import KdfParams, Unlocked
from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.remotes.base import Remote
from cairn.remotes.memory import MemoryRemote
from cairn.replication import SyncRules
from cairn.store.db import Database
from cairn.sync.engine import Syncer
from cairn.sync.keys import join

Replica = tuple[Store, Syncer]
PASSPHRASE = "correct horse battery staple"
FAST_KDF = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)  # tests only: ms, not 100 ms


def keys_for(remote: Remote) -> Unlocked:
    """The workspace's keys: the keyring is made by the first replica, opened by the rest."""
    return join(remote, PASSPHRASE, kdf=FAST_KDF)[0]


@pytest.fixture
def remote() -> MemoryRemote:
    return MemoryRemote()


@pytest.fixture
def make_replica(
    tmp_path: Path, embedder: OnnxEmbedder, remote: MemoryRemote
) -> Iterator[Callable[..., Replica]]:
    opened: list[Store] = []

    def make(
        name: str, rules: SyncRules | None = None, via: Remote | None = None, project: str = "p"
    ) -> Replica:
        store = Store(Database(tmp_path / f"{name}.db"), embedder, project=project, source=name)
        opened.append(store)
        target = via or remote
        return store, Syncer(store, target, keys_for(target), rules, page_size=7)

    yield make
    for store in opened:
        store.close()


def sync_all(*syncers: Syncer) -> None:
    """Push and pull every replica until nothing moves (two quiet rounds)."""
    for _round in range(3):
        for syncer in syncers:
            syncer.push()
        for syncer in syncers:
            syncer.pull()
    for syncer in syncers:
        syncer.push()


def snapshot(store: Store) -> dict[str, object]:
    """Everything replicas must agree on, in a comparable form."""
    conn = store.db.conn
    memories = {
        r[0]: r[1:]
        for r in conn.execute(
            "SELECT id, content, kind, project, topic_key, deleted, content_hash, ancestors "
            "FROM memories"
        )
    }
    tags = sorted(
        conn.execute(
            "SELECT m.id, t.tag FROM memory_tags t JOIN memories m ON m.rowid = t.memory_rowid"
        ).fetchall()
    )
    relations = sorted(
        conn.execute("SELECT from_id, to_id, type, deleted FROM relations").fetchall()
    )
    conflicts = sorted(conn.execute("SELECT memory_id, hlc, content FROM conflicts").fetchall())
    vectors = sorted(
        conn.execute(
            "SELECT m.id, v.vector FROM memory_vectors v JOIN memories m "
            "ON m.rowid = v.memory_rowid"
        ).fetchall()
    )
    return {
        "memories": memories,
        "tags": tags,
        "relations": relations,
        "conflicts": conflicts,
        "vectors": vectors,
    }
