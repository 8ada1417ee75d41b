"""Property: replicas that saw the same changes hold the same memories, whatever the delivery.

Three (or more, under ``slow``) replicas do random operations, sync in random order through a
remote that reorders and duplicates deliveries and sometimes loses the acknowledgement of a push
it stored. After a final full sync every replica must be identical, and no memory any replica
created may be missing anywhere. Hypothesis prints the failing example and a replay blob.

Only the errors a step provokes on purpose are allowed: the lost acknowledgement of a push, and
an edit to content another live memory already holds. Any other error (a pull that cannot open
a payload, a merge that fails) fails the test, as does a dead letter or an unsent change left
after the final sync.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.errors import InvalidInput, RemoteUnreachable
from cairn.model import content_hash
from cairn.protocol import PullPage, PushResult, WireMutation
from cairn.remotes.memory import MemoryRemote
from cairn.store.db import Database
from cairn.sync.engine import Syncer

from .conftest import keys_for, snapshot, sync_all

TEXTS = [
    "Deploys go out on Tuesdays",
    "The cache TTL is five minutes",
    "Use pnpm, not npm",
    "Postgres runs version 16",
    "Feature flags live in LaunchDarkly",
    "The on-call rota changes on Mondays",
]
TAGS = ["ops", "db", "web", "infra"]

OPS = st.one_of(
    st.tuples(st.just("remember"), st.sampled_from(TEXTS), st.sampled_from(TAGS)),
    st.tuples(st.just("topic"), st.sampled_from(TEXTS), st.sampled_from(["cache", "db"])),
    st.tuples(st.just("tag"), st.integers(0, 50), st.sampled_from(TAGS)),
    st.tuples(st.just("edit"), st.integers(0, 50), st.sampled_from(TEXTS)),
    st.tuples(st.just("forget"), st.integers(0, 50), st.just("")),
    st.tuples(st.just("push"), st.just(0), st.just("")),
    st.tuples(st.just("pull"), st.just(0), st.just("")),
    st.tuples(st.just("replay"), st.just(0), st.just("")),
)


class AckLost(RemoteUnreachable):
    """The one failure ``ChaosRemote`` makes: a push stored whose answer never arrived."""


class ChaosRemote:
    """The in-memory remote seen through a bad network: pages shuffled and partly repeated,
    and now and then a push stored whose acknowledgement never arrives."""

    def __init__(self, inner: MemoryRemote, rng: random.Random) -> None:
        self.inner = inner
        self.rng = rng
        self.url = inner.url
        self.calm = False  # True for the final sync: every acknowledgement arrives

    def push_size(self, mutation: WireMutation) -> int:
        return self.inner.push_size(mutation)

    def push(self, mutations: Sequence[WireMutation]) -> PushResult:
        result = self.inner.push(mutations)
        if not self.calm and self.rng.random() < 0.25:
            raise AckLost("acknowledgement lost")
        return result

    def pull(
        self,
        cursor: str | None,
        limit: int = 1000,
        scopes: Sequence[str] | None = None,
        wait: float = 0.0,
    ) -> PullPage:
        page = self.inner.pull(cursor, limit, scopes, wait)
        items = list(page.mutations)
        items += self.rng.sample(items, k=len(items) // 2)  # duplicated deliveries
        self.rng.shuffle(items)  # reordered deliveries
        return PullPage(items, page.cursor, page.has_more)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def _run(
    tmp: Path,
    embedder: OnnxEmbedder,
    replicas: int,
    steps: list[tuple[int, tuple[str, object, str]]],
    seed: int,
) -> None:
    note(f"seed={seed}")
    rng = random.Random(seed)
    remote = MemoryRemote()
    stores: list[Store] = []
    syncers: list[Syncer] = []
    for i in range(replicas):
        store = Store(Database(tmp / f"r{i}.db"), embedder, project="p", source=f"r{i}")
        chaos = ChaosRemote(remote, rng)
        stores.append(store)
        syncers.append(Syncer(store, chaos, keys_for(chaos), page_size=3))  # type: ignore[arg-type]
    created: set[str] = set()
    versions: list[tuple[str, str]] = []  # (memory id, content clock) of every content written
    try:
        for who, (op, arg, extra) in steps:
            store, syncer = stores[who % replicas], syncers[who % replicas]
            live = store.list(limit=1000)
            target = live[int(arg) % len(live)].id if live and isinstance(arg, int) else None
            if op == "remember":
                made = store.remember(str(arg), tags=[extra])
                if made.created:
                    created.add(made.memory.id)
                    versions.append((made.memory.id, made.memory.hlc))
            elif op == "topic":
                made = store.remember(f"{arg} ({extra})", topic_key=extra)
                if made.created:
                    created.add(made.memory.id)
                    versions.append((made.memory.id, made.memory.hlc))
            elif op == "tag" and target:
                store.remember(store.get(target).content, tags=[extra])
            elif op == "edit" and target:
                before = store.get(target)
                text = f"{extra} [{who}]"
                taken = {m.id for m in live if m.content_hash == content_hash(text)} - {target}
                if taken:  # refused on purpose: another memory already says exactly this
                    with pytest.raises(InvalidInput, match="already says exactly this"):
                        store.edit(target, text)
                    continue
                edited = store.edit(target, text)
                if edited.content_hash != before.content_hash:
                    versions.append((target, edited.hlc))
            elif op == "forget" and target:
                store.forget(target)
            elif op == "push":
                try:
                    syncer.push()
                except AckLost:
                    pass  # the outbox keeps the batch for the next push
            elif op == "pull":
                syncer.pull()
            elif op == "replay":  # deliver everything again from the start
                store.db.conn.execute("DELETE FROM meta WHERE key = 'sync.cursor'")
                syncer.pull()
        for syncer in syncers:
            syncer.remote.calm = True  # type: ignore[attr-defined]
        sync_all(*syncers)
        first = snapshot(stores[0])
        for other in stores[1:]:
            assert snapshot(other) == first
        assert created <= set(first["memories"])  # type: ignore[arg-type]
        for syncer in syncers:
            assert syncer.dead_letters() == []  # nothing was refused or failed to open
            assert syncer.status()["pending"] == 0  # every change was acknowledged
        _assert_no_content_lost(stores[0], versions)
    finally:
        for store in stores:
            store.close()


def _assert_no_content_lost(store: Store, versions: list[tuple[str, str]]) -> None:
    """Every content version written is current, knowingly overwritten, or a kept conflict."""
    conn = store.db.conn
    for memory_id, hlc in versions:
        deleted, current, ancestors = conn.execute(
            "SELECT deleted, coalesce(json_extract(field_hlc, '$.content'), created_hlc), "
            "ancestors FROM memories WHERE id = ?",
            (memory_id,),
        ).fetchone()
        kept = conn.execute(
            "SELECT 1 FROM conflicts WHERE memory_id = ? AND hlc = ?", (memory_id, hlc)
        ).fetchone()
        assert deleted or hlc == current or hlc in json.loads(ancestors) or kept, (
            f"content version {hlc} of {memory_id} was lost"
        )


STEPS = st.lists(st.tuples(st.integers(0, 5), OPS), min_size=15, max_size=60)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=STEPS, seed=st.integers(0, 2**32 - 1))
def test_three_replicas_converge(
    tmp_path_factory: pytest.TempPathFactory,
    embedder: OnnxEmbedder,
    steps: list[tuple[int, tuple[str, object, str]]],
    seed: int,
) -> None:
    _run(tmp_path_factory.mktemp("conv"), embedder, 3, steps, seed)


@pytest.mark.slow
@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    replicas=st.integers(3, 5),
    steps=st.lists(st.tuples(st.integers(0, 5), OPS), min_size=10, max_size=120),
    seed=st.integers(0, 2**32 - 1),
)
def test_many_replicas_converge_soak(
    tmp_path_factory: pytest.TempPathFactory,
    embedder: OnnxEmbedder,
    replicas: int,
    steps: list[tuple[int, tuple[str, object, str]]],
    seed: int,
) -> None:
    _run(tmp_path_factory.mktemp("soak"), embedder, replicas, steps, seed)
