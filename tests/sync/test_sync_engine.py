"""The sync engine over the in-memory remote: what users of several devices would notice."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from cairn.errors import MutationRejected, RemoteUnreachable
from cairn.protocol import PullPage, PushResult, WireMutation
from cairn.remotes.memory import MemoryRemote
from cairn.replication import SyncRules
from cairn.store import outbox
from cairn.sync.engine import Syncer

from .conftest import Replica, keys_for, snapshot, sync_all

MakeReplica = Callable[..., Replica]


def test_a_memory_travels_with_its_vector_and_no_embedding_on_pull(
    make_replica: MakeReplica,
) -> None:
    a_store, a = make_replica("a")
    b_store, b = make_replica("b")
    made = a_store.remember(
        "The billing service retries webhooks three times", kind="fact", tags=["billing"]
    )
    report = a.push()
    assert (report.pushed, report.stored) == (1, 1)
    before = b_store.embedder.texts_embedded  # type: ignore[attr-defined]
    pulled = b.pull()
    assert b_store.embedder.texts_embedded == before  # type: ignore[attr-defined]
    assert (pulled.applied, pulled.embedded) == (1, 0)
    copy = b_store.get(made.memory.id)
    assert (copy.content, copy.kind, copy.tags, copy.project) == (
        made.memory.content,
        "fact",
        ("billing",),
        "p",
    )
    hits = b_store.recall("how often are webhooks retried?")
    assert hits[0].memory.id == made.memory.id
    assert snapshot(a_store)["vectors"] == snapshot(b_store)["vectors"]
    with a_store.db.read() as conn:
        assert outbox.count(conn) == 0  # acknowledged, so cleared


def test_tags_merge_as_a_set_and_a_delete_beats_older_edits(make_replica: MakeReplica) -> None:
    a_store, a = make_replica("a")
    b_store, b = make_replica("b")
    first = a_store.remember("Deploys happen on Tuesdays", tags=["ops"]).memory
    second = a_store.remember("Feature flags live in LaunchDarkly").memory
    sync_all(a, b)
    a_store.remember("Deploys happen on Tuesdays", tags=["release"])  # adds a tag on A
    b_store.remember("Deploys happen on Tuesdays", tags=["calendar"])  # and on B
    b_store.edit(second.id, kind="decision")  # an edit on B ...
    a_store.forget(second.id)  # ... and a later delete on A
    sync_all(a, b)
    for store in (a_store, b_store):
        assert store.get(first.id).tags == ("calendar", "ops", "release")
        assert [m.id for m in store.list()] == [first.id]
    assert snapshot(a_store) == snapshot(b_store)


def test_concurrent_content_edits_keep_the_loser_as_a_conflict(make_replica: MakeReplica) -> None:
    a_store, a = make_replica("a")
    b_store, b = make_replica("b")
    memory = a_store.remember("The API rate limit is 100 requests per minute").memory
    sync_all(a, b)
    a_store.edit(memory.id, "The API rate limit is 200 requests per minute")
    b_store.edit(memory.id, "The API rate limit is 500 requests per minute")
    sync_all(a, b)
    assert snapshot(a_store) == snapshot(b_store)
    [conflict] = a.conflicts()
    assert [c.id for c in b.conflicts()] == [conflict.id]
    texts = {conflict.content, conflict.current}
    assert texts == {
        "The API rate limit is 200 requests per minute",
        "The API rate limit is 500 requests per minute",
    }
    result = b.resolve(conflict.id, "remote")
    assert result["memory"]["content"] == conflict.content
    sync_all(a, b)
    assert a.conflicts() == [] == b.conflicts()
    assert a_store.get(memory.id).content == conflict.content
    assert snapshot(a_store) == snapshot(b_store)


def test_resolve_both_keeps_each_version_as_a_memory(make_replica: MakeReplica) -> None:
    a_store, a = make_replica("a")
    b_store, b = make_replica("b")
    memory = a_store.remember("Staging runs on one node").memory
    sync_all(a, b)
    a_store.edit(memory.id, "Staging runs on two nodes")
    b_store.edit(memory.id, "Staging runs on three nodes")
    sync_all(a, b)
    [conflict] = a.conflicts()
    a.resolve(memory.id[:12], "both")
    sync_all(a, b)
    contents = sorted(m.content for m in b_store.list())
    assert contents == ["Staging runs on three nodes", "Staging runs on two nodes"]
    assert b.conflicts() == []


def test_sequential_edits_are_not_conflicts(make_replica: MakeReplica) -> None:
    a_store, a = make_replica("a")
    b_store, b = make_replica("b")
    memory = a_store.remember("Logs are kept for 7 days").memory
    sync_all(a, b)
    a_store.edit(memory.id, "Logs are kept for 14 days")
    a_store.edit(memory.id, "Logs are kept for 30 days")  # both pushed as one state
    sync_all(a, b)
    b_store.edit(memory.id, "Logs are kept for 90 days")
    sync_all(a, b)
    assert a.conflicts() == [] == b.conflicts()
    assert a_store.get(memory.id).content == "Logs are kept for 90 days"


def test_identical_memories_from_two_devices_converge_to_one(make_replica: MakeReplica) -> None:
    a_store, a = make_replica("a")
    b_store, b = make_replica("b")
    one = a_store.remember("Use ruff for linting", tags=["python"]).memory
    two = b_store.remember("Use ruff  for linting", tags=["tooling"]).memory  # same, normalised
    sync_all(a, b)
    keeper, other = sorted([one.id, two.id])
    for store in (a_store, b_store):
        [live] = store.list()
        assert live.id == keeper and live.tags == ("python", "tooling")
        assert store.has_relation(other, keeper, "duplicate_of")
    assert snapshot(a_store) == snapshot(b_store)


def test_topic_supersession_is_the_same_whatever_arrives_first(make_replica: MakeReplica) -> None:
    a_store, a = make_replica("a")
    b_store, b = make_replica("b")
    c_store, c = make_replica("c")
    a_store.remember("Python 3.10 for services", topic_key="py")
    a.push()
    b_store.remember("Python 3.11 for services", topic_key="py")
    b.push()
    c_store.remember("Python 3.12 for services", topic_key="py")
    c.push()
    sync_all(c, b, a)
    assert snapshot(a_store) == snapshot(b_store) == snapshot(c_store)
    hits = a_store.recall("which python version for services", limit=3)
    assert hits[0].memory.content == "Python 3.12 for services"


def test_pulling_the_same_mutations_again_changes_nothing(make_replica: MakeReplica) -> None:
    a_store, a = make_replica("a")
    b_store, b = make_replica("b")
    for i in range(20):
        a_store.remember(f"Fact number {i} about the payments queue")
    sync_all(a, b)
    before = snapshot(b_store)
    b_store.db.conn.execute("DELETE FROM meta WHERE key = 'sync.cursor'")
    again = b.pull()
    assert again.received == 20 and again.applied == 0 and again.unchanged == 20
    assert snapshot(b_store) == before


class _Together:
    """Holds each pull from the start until two have been answered, so two pulls race to
    apply the same first page."""

    def __init__(self, inner: MemoryRemote) -> None:
        self.inner = inner
        self.barrier = threading.Barrier(2, timeout=10)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def pull(
        self,
        cursor: str | None,
        limit: int = 1000,
        scopes: Sequence[str] | None = None,
        wait: float = 0.0,
    ) -> PullPage:
        page = self.inner.pull(cursor, limit, scopes, wait)
        if cursor is None:
            self.barrier.wait()
        return page


def test_two_concurrent_pulls_of_one_store_apply_each_page_once(
    make_replica: MakeReplica, remote: MemoryRemote
) -> None:
    a_store, a = make_replica("a")
    b_store, b = make_replica("b")
    for i in range(40):
        a_store.remember(f"Fact number {i} about the invoice exporter")
    a.push()
    racing = _Together(remote)
    pullers = [Syncer(b_store, racing, keys_for(remote), page_size=7) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda s: s.pull(), pullers))
    # The loser of the first page stops (the winner goes on), so nothing is applied twice
    # and the cursor never moves back.
    assert sorted(r.received for r in reports) == [0, 40]
    assert sum(r.applied for r in reports) == 40
    assert b.pull().received == 0
    assert snapshot(b_store)["memories"] == snapshot(a_store)["memories"]


class _AckLost:
    """A fault: the remote stores the batch, then the connection drops before the answer."""

    def __init__(self, inner: MemoryRemote) -> None:
        self.inner = inner
        self.fail = True

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def push(self, mutations: Sequence[WireMutation]) -> PushResult:
        result = self.inner.push(mutations)
        if self.fail:
            raise RemoteUnreachable("connection reset after the remote stored the batch")
        return result


def test_a_crash_between_push_and_acknowledgement_loses_and_duplicates_nothing(
    make_replica: MakeReplica, remote: MemoryRemote
) -> None:
    flaky = _AckLost(remote)
    a_store, a = make_replica("a", via=flaky)  # type: ignore[arg-type]
    b_store, b = make_replica("b")
    made = a_store.remember("Secrets rotate every 90 days").memory
    with pytest.raises(RemoteUnreachable):
        a.push()
    with a_store.db.read() as conn:
        assert outbox.count(conn) == 1  # not acknowledged, so still queued
    flaky.fail = False
    report = a.push()
    assert (report.stored, report.duplicates) == (0, 1)
    b.pull()
    assert b_store.get(made.id).content == "Secrets rotate every 90 days"
    assert remote.status()["mutations"] == 1


class _Refuses:
    """A fault: the remote refuses one named mutation of any batch holding it."""

    def __init__(self, inner: MemoryRemote, bad_entity: str) -> None:
        self.inner = inner
        self.bad_entity = bad_entity

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def push(self, mutations: Sequence[WireMutation]) -> PushResult:
        bad = {m.mutation_id for m in mutations if m.entity_id == self.bad_entity}
        if bad:
            raise MutationRejected(
                "refused", {mid: ("invalid_mutation", "test refusal") for mid in bad}
            )
        return self.inner.push(mutations)


def test_a_refused_mutation_goes_to_dead_letters_and_the_rest_still_sync(
    make_replica: MakeReplica, remote: MemoryRemote
) -> None:
    a_store, _ = make_replica("a")
    bad = a_store.remember("This one the remote refuses").memory
    good = [a_store.remember(f"Good memory {i}").memory for i in range(3)]
    refusing = _Refuses(remote, bad.id)
    a = Syncer(a_store, refusing, keys_for(refusing))  # type: ignore[arg-type]
    report = a.push()
    assert (report.pushed, report.dead_lettered) == (3, 1)
    [letter] = a.dead_letters()
    assert (letter.entity_id, letter.code, letter.direction) == (bad.id, "invalid_mutation", "push")
    b_store, b = make_replica("b")
    b.pull()
    assert sorted(m.id for m in b_store.list()) == sorted(m.id for m in good)
    assert a.retry_dead_letters() == 1
    with a_store.db.read() as conn:
        assert outbox.count(conn) == 1


def test_selective_sync_keeps_excluded_memories_and_file_chunks_local(
    make_replica: MakeReplica,
) -> None:
    rules = SyncRules(exclude_projects=("secret",), exclude_tags=("private",))
    a_store, a = make_replica("a", rules=rules)
    a_store.remember("Shared decision about caching", kind="decision")
    a_store.remember("Secret project plan", project="secret")
    a_store.remember("My private note", tags=["private"])
    a_store.remember("def main(): ...", kind="file_chunk")
    report = a.push()
    assert (report.pushed, report.kept_local) == (1, 3)
    b_store, b = make_replica("b", rules=SyncRules(include_projects=("p",)))
    b.pull()
    assert [m.content for m in b_store.list()] == ["Shared decision about caching"]


def test_scope_tags_let_the_remote_filter_pulls_by_project(
    make_replica: MakeReplica, remote: MemoryRemote
) -> None:
    a_store, a = make_replica("a")
    a_store.remember("Alpha fact", project="alpha")
    a_store.remember("Beta fact", project="beta")
    a.push()
    b_store, b = make_replica("b", rules=SyncRules(include_projects=("beta",)))
    report = b.pull()
    assert report.received == 1  # the remote filtered by blind scope tag
    assert [m.content for m in b_store.list()] == ["Beta fact"]
    scopes = {m.scope for m in remote.pull(None).mutations}
    assert len(scopes) == 2 and not any("alpha" in (s or "") for s in scopes)
