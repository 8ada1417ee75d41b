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

import itertools
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
from cairn.protocol import PullPage, PushResult, WireMutation, check_batch
from cairn.remotes.memory import MemoryRemote
from cairn.server.storage import ServerStorage
from cairn.store.db import Database
from cairn.sync.engine import Syncer

from ..conftest import server_storage_for
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


COMPACTING_OPS = st.one_of(OPS, st.tuples(st.just("compact"), st.just(0), st.just("")))
"""For a compacting server: the same, and now and then a compaction of its log."""
HOUR_MS = 3_600_000


class CompactingServer(MemoryRemote):
    """A sync server's storage as the log (the keyring stays in memory): pushes and pulls as
    its routes make them, each pull recording the device's read position, and compactions
    that keep readers active for a day, on a clock six hours on at every step (so a replica
    that has not pulled for four steps no longer holds the log back)."""

    def __init__(self, storage: ServerStorage, workspace_id: str) -> None:
        super().__init__()
        self.storage = storage
        self.workspace_id = workspace_id
        self.clock = 1_700_000_000_000
        self.removed = 0
        storage.create_workspace(workspace_id, workspace_id, self.clock)

    def push(self, mutations: Sequence[WireMutation]) -> PushResult:
        check_batch(mutations, sealed=True)
        device = mutations[0].device_id if mutations else None
        return self.storage.push(self.workspace_id, mutations, device, self.clock)

    def pull_as(
        self, device: str, cursor: str | None, limit: int, scopes: Sequence[str] | None
    ) -> PullPage:
        since = int(cursor or 0)
        self.storage.record_seen([], [(self.workspace_id, device, self.clock, since)])
        return self.storage.pull(self.workspace_id, since, limit, scopes)

    def compact(self) -> None:
        self.removed += self.storage.compact(self.workspace_id, self.clock, 1, by="test").removed


class AsDevice:
    """The compacting server as one replica reaches it: its pulls say which device asks."""

    def __init__(self, server: CompactingServer, device: str) -> None:
        self.server = server
        self.device = device

    def pull(
        self,
        cursor: str | None,
        limit: int = 1000,
        scopes: Sequence[str] | None = None,
        wait: float = 0.0,
    ) -> PullPage:
        return self.server.pull_as(self.device, cursor, limit, scopes)

    def __getattr__(self, name: str) -> object:
        return getattr(self.server, name)


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
    server: CompactingServer | None = None,
) -> None:
    note(f"seed={seed}")
    rng = random.Random(seed)
    remote = MemoryRemote() if server is None else server
    stores: list[Store] = []
    syncers: list[Syncer] = []
    for i in range(replicas):
        store = Store(Database(tmp / f"r{i}.db"), embedder, project="p", source=f"r{i}")
        inner = remote if server is None else AsDevice(server, store.device_id())
        chaos = ChaosRemote(inner, rng)  # type: ignore[arg-type]
        stores.append(store)
        syncers.append(Syncer(store, chaos, keys_for(chaos), page_size=3))  # type: ignore[arg-type]
    created: set[str] = set()
    versions: list[tuple[str, str]] = []  # (memory id, content clock) of every content written
    try:
        for who, (op, arg, extra) in steps:
            store, syncer = stores[who % replicas], syncers[who % replicas]
            if server is not None:
                server.clock += 6 * HOUR_MS
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
            elif op == "compact" and server is not None:
                server.compact()
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
        if server is not None:  # a device new to the compacted log joins: all still agree
            server.compact()
            late = Store(Database(tmp / "late.db"), embedder, project="p", source="late")
            stores.append(late)
            reader = AsDevice(server, late.device_id())
            newcomer = Syncer(late, reader, keys_for(reader), page_size=3)  # type: ignore[arg-type]
            sync_all(newcomer, *syncers)
            first = snapshot(stores[0])
            for other in stores[1:]:
                assert snapshot(other) == first
            assert newcomer.dead_letters() == [] and newcomer.status()["pending"] == 0
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


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(st.tuples(st.integers(0, 5), COMPACTING_OPS), min_size=15, max_size=60),
    seed=st.integers(0, 2**32 - 1),
)
def test_three_replicas_converge_through_a_compacting_server(
    tmp_path_factory: pytest.TempPathFactory,
    embedder: OnnxEmbedder,
    request: pytest.FixtureRequest,
    backend: str,
    steps: list[tuple[int, tuple[str, object, str]]],
    seed: int,
) -> None:
    """The same property through the sync server's storage, which compacts its log between
    steps (replicas that have not pulled for a day no longer hold it back), and a device new
    to the workspace that reads the compacted log at the end ends with the same memories."""
    tmp = tmp_path_factory.mktemp("compacting")
    storage = _storages(backend, tmp_path_factory, request)
    server = CompactingServer(storage, f"w{next(_WORKSPACES)}")
    _run(tmp, embedder, 3, steps, seed, server)


_WORKSPACES = itertools.count()
_OPEN: dict[str, ServerStorage] = {}


def _storages(
    backend: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> ServerStorage:
    """One storage per backend for the whole test (a workspace per example), closed at its end."""
    if backend not in _OPEN:
        _OPEN[backend] = server_storage_for(backend, tmp_path_factory.mktemp(backend), request)
        request.addfinalizer(lambda: _OPEN.pop(backend).close())
    return _OPEN[backend]


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
