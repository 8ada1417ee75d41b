"""Log retention on each storage backend: a compaction drops exactly the mutations the same
device superseded and every active reader passed, and devices (one offline across it, and a new
one) still converge through a real server."""

from __future__ import annotations

import io
import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.errors import InvalidInput, NotFound
from cairn.memory_rules import NewMemory
from cairn.protocol import HOSTED, WireMutation
from cairn.remotes.http import HttpRemote
from cairn.server import keys, transfer
from cairn.server.context import ServerSettings, now_ms
from cairn.server.retention import Compactor
from cairn.server.storage import DAY_MS, ServerStorage
from cairn.store.db import Database
from cairn.sync.engine import Syncer

from ..conftest import SyncServer, server_storage_for
from ..sync.conftest import snapshot, sync_all
from ..sync.test_sync_over_http import _replica
from .test_hosted import Agent
from .test_server_cli import cairn, env, ok_json, serving
from .test_server_cli import mutation as cli_mutation
from .test_storage import envelope

__all__ = ["env"]  # the fixture: a fresh CAIRN_HOME, on each backend

NOW = 1_700_000_000_000
ENTITIES = ("e0", "e1", "rel-e2")
DEVICES = ("d0", "d1", "server-p1")  # the last: a hosted server process's own writes
SCOPES = (None, "aaaaaaaa")
_ids = itertools.count()


@pytest.fixture
def storage(
    tmp_path: Path, server_backend: str, request: pytest.FixtureRequest
) -> Iterator[ServerStorage]:
    made = server_storage_for(server_backend, tmp_path, request)
    yield made
    made.close()


def wire(n: int, entity: str, device: str, clock: int, scope: str | None = None) -> WireMutation:
    payload = envelope(b"state %d" % n + b"." * (n % 7))
    return WireMutation(
        f"m-{n}", device, f"{NOW + clock:013d}-0000-{device}", entity, scope, payload
    )


def superseded(log: list[WireMutation], horizon: int) -> set[int]:
    """The reference rule, one mutation at a time: a later one of the same entity, device
    and scope, with a later clock, and a seq at most ``horizon``; never a hosted server's."""
    return {
        m.seq
        for m in log
        if m.seq is not None
        and m.seq <= horizon
        and not m.device_id.startswith("server-")
        and any(
            (n.entity_id, n.device_id, n.scope) == (m.entity_id, m.device_id, m.scope)
            and n.seq is not None
            and n.seq > m.seq
            and n.hlc > m.hlc
            for n in log
        )
    }


MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(ENTITIES),
        st.sampled_from(DEVICES),
        st.integers(0, 30),  # the clock: mostly rising per device, not always (out of order)
        st.sampled_from(SCOPES),
    ),
    max_size=40,
)
READERS = st.lists(
    st.tuples(st.sampled_from(DEVICES), st.integers(0, 45), st.booleans()), max_size=4
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=MUTATIONS, readers=READERS)
def test_compaction_drops_exactly_what_is_superseded_and_passed(
    storage: ServerStorage,
    steps: list[tuple[str, str, int, str | None]],
    readers: list[tuple[str, int, bool]],
) -> None:
    workspace_id = f"w{next(_ids)}"
    storage.create_workspace(workspace_id, workspace_id, NOW)
    for n, (entity, device, clock, scope) in enumerate(steps):
        storage.push(workspace_id, [wire(n, entity, device, clock, scope)], device, NOW)
    log = list(storage.pull(workspace_id, 0, 1000, None).mutations)
    positions: dict[str, int] = {}
    latest: dict[str, int] = {}
    for device, position, recent in readers:  # each device's newest pull counts (ties: the last)
        at = NOW if recent else NOW - 31 * DAY_MS
        storage.record_seen([], [(workspace_id, device, at, position)])
        if at >= latest.get(device, at):
            latest[device] = at
            positions[device] = position if recent else -1
    active = [p for p in positions.values() if p >= 0]
    horizon = min([*active, len(log)])  # a position past the log's end counts as its end

    made = storage.compact(workspace_id, NOW, 30, by="test")

    doomed = superseded(log, horizon)
    kept = storage.pull(workspace_id, 0, 1000, None).mutations
    assert [m.seq for m in kept] == [m.seq for m in log if m.seq not in doomed]
    assert kept == [m for m in log if m.seq not in doomed]  # what stays is untouched
    assert (made.removed, made.mutations, made.horizon) == (len(doomed), len(kept), horizon)
    assert made.removed_bytes == sum(len(m.payload) for m in log if m.seq in doomed)
    assert made.stored_bytes == sum(len(m.payload) for m in kept)
    assert storage.usage(workspace_id, 1, NOW).stored_bytes == made.stored_bytes
    # Each entity's newest state from each device in each scope is always kept.
    for group in {(m.entity_id, m.device_id, m.scope) for m in log}:
        newest = max((m for m in log if (m.entity_id, m.device_id, m.scope) == group), key=seq_of)
        assert newest in kept
    hosted = [m for m in log if m.device_id.startswith("server-")]
    assert all(m in kept for m in hosted)  # a hosted server's own states all stay
    assert storage.compact(workspace_id, NOW, 30, by="test").removed == 0  # nothing more
    assert storage.latest_seq(workspace_id) == len(log)  # seqs are never reused
    if log:
        assert storage.push(workspace_id, [wire(99, "e0", "d0", 99)], "d0", NOW).last_seq == (
            len(log) + 1
        )


def seq_of(mutation: WireMutation) -> int:
    return mutation.seq or 0


def test_readers_hold_back_what_they_have_not_read(storage: ServerStorage) -> None:
    storage.create_workspace("w1", "team", NOW)
    for n in range(6):  # one memory edited six times on one device: seqs 1..6
        storage.push("w1", [wire(n, "e0", "d0", n)], "d0", NOW)
    storage.record_seen([], [("w1", "reader", NOW, 3)])  # has read seqs 1..3
    storage.record_seen([], [("w1", "gone", NOW - 40 * DAY_MS, 0)])  # not active: ignored
    storage.register_device("w1", "pusher", "pushes only", NOW)  # never pulled: not a reader
    made = storage.compact("w1", NOW, 30, by="cli")
    assert (made.horizon, made.readers, made.removed) == (3, 1, 3)
    assert [m.seq for m in storage.pull("w1", 0, 100, None).mutations] == [4, 5, 6]
    # A page after the gap resumes by seq: a reader at 0 gets the rest, nothing twice.
    page = storage.pull("w1", 0, 2, None)
    assert [m.seq for m in page.mutations] == [4, 5] and page.cursor == "5" and page.has_more
    # A reader that pulled before its read position was recorded holds everything back.
    storage.record_seen([], [("w1", "old", NOW, None)])
    assert storage.compact("w1", NOW, 30, by="cli").horizon == 0
    (entry, *_) = storage.audit_log("w1", 10, None)
    assert entry.action == "compact" and entry.detail["removed"] == 0
    assert entry.detail["by"] == "cli"


def test_a_hosted_index_is_a_reader_too(storage: ServerStorage) -> None:
    storage.create_workspace("w1", "team", NOW, HOSTED)
    for n in range(4):
        storage.push("w1", [wire(n, "e0", "d0", n)], "d0", NOW)
    assert storage.compact("w1", NOW, 30, by="test").removed == 0  # the index read nothing
    assert storage.put_index("w1", 0, 2, [], [])
    made = storage.compact("w1", NOW, 30, by="test")
    assert (made.horizon, made.removed) == (2, 2)


def test_a_policy_is_set_checked_and_found_by_the_server(storage: ServerStorage) -> None:
    storage.create_workspace("w1", "one", NOW)
    storage.create_workspace("w2", "two", NOW)
    assert storage.retention("w1") is None and storage.retained() == []
    storage.set_retention("w2", 7)
    assert storage.retention("w2") == 7 and storage.retained() == [("w2", 7)]
    with pytest.raises(InvalidInput, match="between 1 and"):
        storage.set_retention("w1", 0)
    with pytest.raises(NotFound):
        storage.set_retention("nope", 7)
    for n in range(3):
        storage.push("w1", [wire(n, "e0", "d0", n)], "d0", NOW)
        storage.push("w2", [wire(10 + n, "e0", "d0", n)], "d0", NOW)
    (made,) = Compactor(storage, 0).round(NOW)  # only the workspace with a policy
    assert (made.workspace_id, made.removed) == ("w2", 2)
    assert storage.stats("w1").mutations == 3
    storage.set_retention("w2", None)
    assert storage.retained() == []


def pulls_recorded(storage: ServerStorage, workspace: str, devices: set[str], since: int) -> None:
    """Waits until the server's batched last-seen (``cairn.server.seen``, written within a
    second) holds a pull at ``since`` or later, with its read position, for each of ``devices``."""
    deadline = time.monotonic() + 30
    while True:
        done = {
            d.device_id
            for d in storage.devices(workspace)
            if d.read_position is not None and (d.last_pull_at or 0) >= since
        }
        if devices <= done:
            return
        assert time.monotonic() < deadline, f"pulls not recorded: {devices - done}"
        time.sleep(0.05)


def test_a_device_offline_across_a_compaction_converges(
    tmp_path: Path,
    embedder: OnnxEmbedder,
    sync_server_factory: Callable[..., SyncServer],
) -> None:
    """The phone syncs, then goes quiet for longer than the active window while the laptop
    edits one memory again and again; the compaction drops the laptop's superseded states,
    some of which the phone never read. The phone, and a device new to the workspace,
    converge with the others all the same."""
    server = sync_server_factory(ServerSettings(rate_limit=0, touch_interval=0))
    url, key, workspace = server.url, server.admin_key, server.workspace.id
    laptop, desktop, phone = (
        _replica(tmp_path, embedder, name, url, key, page_size=5)
        for name in ("laptop", "desktop", "phone")
    )
    made = laptop.store.remember_many([NewMemory(f"deploy step {i}") for i in range(6)])
    desktop.store.remember_many([NewMemory(f"rollback step {i}") for i in range(4)])
    start = now_ms()
    sync_all(laptop, desktop, phone)
    phone_id = phone.store.device_id()
    pulls_recorded(server.storage, workspace, {phone_id}, start)
    # The phone's last pull was long ago: it no longer holds the log back.
    with server.storage._write(workspace) as conn:
        conn.execute(
            "UPDATE devices SET last_pull_at = ? WHERE workspace_id = ? AND device_id = ?",
            (now_ms() - 10 * DAY_MS, workspace, phone_id),
        )
    target = made[0].memory.id
    for round_ in range(6):
        laptop.store.edit(target, content=f"deploy step 0, take {round_}")
        desktop.store.remember_many([NewMemory(f"note {round_}")])
        last = now_ms()
        sync_all(laptop, desktop)
    ids = {laptop.store.device_id(), desktop.store.device_id()}
    pulls_recorded(server.storage, workspace, ids, last)
    before = server.storage.stats(workspace).mutations

    result = server.storage.compact(workspace, now_ms(), 1, by="test")

    assert result.readers == 2 and result.removed >= 5
    assert server.storage.stats(workspace).mutations == before - result.removed
    sync_all(laptop, desktop, phone)
    newcomer = _replica(tmp_path, embedder, "newcomer", url, key, page_size=5)
    sync_all(newcomer)
    first = snapshot(laptop.store)
    for device in (desktop, phone, newcomer):
        assert snapshot(device.store) == first
    assert phone.store.get(target).content == "deploy step 0, take 5"
    for device in (laptop, desktop, phone, newcomer):
        assert device.dead_letters() == []
        device.store.close()


def test_the_cli_sets_a_policy_and_the_server_compacts_by_it(env: dict[str, str]) -> None:
    """`set-retention` (checked, audited), the server's background compaction under it, and
    `compact` on demand, with clear refusals that change nothing."""
    made = ok_json(env, "workspace", "create", "team")
    assert isinstance(made, dict)
    assert ok_json(env, "workspace", "set-retention", "team") == {
        "workspace": "team",
        "retention": False,
        "active_days": None,
    }
    refused = cairn(env, "workspace", "compact", "team")
    assert refused.returncode != 0 and "no retention policy" in refused.stderr
    both = cairn(env, "workspace", "set-retention", "team", "--off", "--active-days", "3")
    assert both.returncode != 0 and "--off" in both.stderr
    assert cairn(env, "workspace", "set-retention", "team", "--active-days", "0").returncode != 0
    assert cairn(env, "workspace", "set-retention", "nobody", "--off").returncode != 0
    shown = cairn(env, "workspace", "set-retention", "team", "--active-days", "7")
    assert shown.returncode == 0 and "active reader for 7 days" in shown.stdout
    with serving(env, "--compact-interval", "1") as (url, _process):
        remote = HttpRemote(url, made["key"])  # pushes, never pulls: holds nothing back
        for n in range(5):  # one entity, five states from one device
            remote.push([cli_mutation(n)])
        deadline = time.monotonic() + 60
        while remote.status()["mutations"] > 1:
            assert time.monotonic() < deadline, "the server did not compact within 60 s"
            time.sleep(0.2)
        assert remote.status()["latest_seq"] == 5
        remote.push([cli_mutation(5)])
        remote.close()
    again = ok_json(env, "workspace", "compact", "team", "--active-days", "1")
    assert isinstance(again, dict)
    assert (again["removed"], again["mutations"], again["horizon"]) == (1, 1, 6)
    listed = ok_json(env, "workspace", "list")
    assert isinstance(listed, list) and listed[0]["mutations"] == 1


def test_a_hosted_index_stays_right_across_a_compaction_and_a_rebuild(
    tmp_path: Path,
    embedder: OnnxEmbedder,
    sync_server_factory: Callable[..., SyncServer],
) -> None:
    """A hosted workspace's memories and recall are the same after its log is compacted, and
    after the index is folded again from position 0 over the compacted log (the workspace
    exported, deleted and imported with the same id, in the same running server)."""
    server = sync_server_factory(ServerSettings(rate_limit=0, touch_interval=0))
    storage = server.storage
    workspace, admin = keys.create_workspace(storage, "hosted", now_ms(), HOSTED)
    with Store(Database(tmp_path / "laptop.db"), embedder, project="p") as laptop:
        syncer = Syncer(laptop, HttpRemote(server.url, admin, device_id="laptop"), None)
        made = laptop.remember_many(
            [NewMemory(f"deploy step {i} of the runbook") for i in range(5)]
        )
        syncer.now()
        target = made[0].memory.id
        for day in ("Monday", "Tuesday", "Wednesday", "Friday"):
            laptop.edit(target, content=f"the deploy runs on {day}")
            syncer.now()
        last = now_ms()
        syncer.pull()  # its read position: the end of the log
        pulls_recorded(storage, workspace.id, {"laptop"}, last)
    query = "which day does the deploy run?"
    agent = Agent(server.url, admin)
    before = agent.client.get("/v1/memories").json()["memories"]
    assert agent.recall(query)[0]["id"] == target

    result = storage.compact(workspace.id, now_ms(), 1, by="test")

    assert result.removed == 4 and result.readers == 1
    assert agent.client.get("/v1/memories").json()["memories"] == before
    lines = list(transfer.export(storage, workspace, now_ms()))
    storage.delete_workspace(workspace.id, now_ms(), by="test")
    transfer.read(io.StringIO("\n".join(lines) + "\n"), storage, now_ms(), by="test")
    _, fresh = keys.issue(storage, workspace.id, "again", ["admin"], now_ms())
    again = Agent(server.url, fresh)
    assert again.client.get("/v1/memories").json()["memories"] == before
    found = again.recall(query)[0]
    assert (found["id"], found["content"]) == (target, "the deploy runs on Friday")
