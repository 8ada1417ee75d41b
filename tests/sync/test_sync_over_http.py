"""The sync engine through a real sync server: body limits, refusals, scopes, read-only keys,
binary and JSON pages side by side."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cairn.binary_pages import MEDIA_TYPE
from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.errors import Forbidden
from cairn.memory_rules import NewMemory
from cairn.remotes.http import HttpRemote
from cairn.replication import SyncRules
from cairn.server.context import ServerSettings
from cairn.store import outbox
from cairn.store.db import Database
from cairn.sync.engine import Syncer

from ..conftest import SyncServer
from .conftest import keys_for, snapshot, sync_all


def _replica(
    tmp_path: Path,
    embedder: OnnxEmbedder,
    name: str,
    url: str,
    key: str,
    binary: bool = True,
    page_size: int = 1000,
) -> Syncer:
    store = Store(Database(tmp_path / f"{name}.db"), embedder, project="p")
    remote = HttpRemote(url, key, device_id=store.device_id(), binary=binary)
    return Syncer(store, remote, keys_for(remote), page_size=page_size)


def test_binary_and_json_devices_converge_through_one_server(
    tmp_path: Path, embedder: OnnxEmbedder, sync_server: SyncServer
) -> None:
    """A device on binary pages and one on JSON (as before them) write, edit and forget; each
    reads what the other pushed, page by page, and both end with the same memories."""
    url, key = sync_server.url, sync_server.admin_key
    new = _replica(tmp_path, embedder, "new", url, key, binary=True, page_size=7)
    old = _replica(tmp_path, embedder, "old", url, key, binary=False, page_size=7)
    mine = new.store.remember_many([NewMemory(f"Binary: deploy step {i}") for i in range(12)])
    theirs = old.store.remember_many([NewMemory(f"JSON: rollback step {i}") for i in range(12)])
    sync_all(new, old)
    new.store.edit(theirs[0].memory.id, content="JSON: rollback step 0, edited on binary")
    old.store.forget(mine[1].memory.id)
    old.store.remember("Unicode survives both forms: café ✓ 日本")
    sync_all(new, old)
    assert snapshot(new.store) == snapshot(old.store)
    assert new.store.count() == old.store.count() == 24
    assert new.store.get(theirs[0].memory.id).content.endswith("edited on binary")
    assert (new.remote.pages, old.remote.pages) == (MEDIA_TYPE, "application/json")


def test_batches_over_the_body_limit_are_split_and_an_oversized_memory_set_aside(
    tmp_path: Path,
    embedder: OnnxEmbedder,
    sync_server_factory: Callable[..., SyncServer],
) -> None:
    # 40 KiB: the noisy memory's payload (~46 KB sealed) is over it as raw bytes too.
    server = sync_server_factory(ServerSettings(max_body=40 * 1024, rate_limit=0))
    a = _replica(tmp_path, embedder, "a", server.url, server.admin_key)
    a.store.remember_many(
        [NewMemory(f"Runbook step {i}: restart the worker pool") for i in range(40)]
    )
    noise = base64.b64encode(os.urandom(45_000)).decode()  # 60 KB that barely compresses
    huge = a.store.remember(noise).memory  # fits a memory, not a request
    report = a.push()
    assert report.pushed == 40 and report.batches > 1  # split to fit under 40 KiB
    assert report.dead_lettered == 1
    [letter] = a.dead_letters()
    assert (letter.entity_id, letter.code) == (huge.id, "payload_too_large")
    with a.store.db.read() as conn:
        assert outbox.count(conn) == 0  # nothing blocks: the rest went through
    b = _replica(tmp_path, embedder, "b", server.url, server.admin_key)
    before = embedder.texts_embedded
    assert b.pull().applied == 40
    assert embedder.texts_embedded == before
    assert b.store.count() == 40


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_push_batches_fill_the_body_limit_in_either_form_and_never_pass_it(
    tmp_path: Path,
    embedder: OnnxEmbedder,
    sync_server_factory: Callable[..., SyncServer],
    binary: bool,
) -> None:
    """Batches are measured in the bytes of the form the device sends: each push request comes
    as close to the limit as one more memory allows, and none is refused as too large."""
    limit = 24 * 1024
    server = sync_server_factory(ServerSettings(max_body=limit, rate_limit=0))
    store = Store(Database(tmp_path / "a.db"), embedder, project="p")
    remote = HttpRemote(server.url, server.admin_key, device_id=store.device_id(), binary=binary)
    a = Syncer(store, remote, keys_for(remote), batch_bytes=limit)
    sizes: list[int] = []
    statuses: list[int] = []

    def sent(request: httpx.Request) -> None:
        if request.url.path == "/v1/sync/push":
            sizes.append(len(request.content))

    def answered(response: httpx.Response) -> None:
        if response.request.url.path == "/v1/sync/push":
            statuses.append(response.status_code)

    remote._client.event_hooks = {"request": [sent], "response": [answered]}
    store.remember_many(
        [
            NewMemory(f"Runbook step {i}: drain node {i}, restart it, check the queue")
            for i in range(60)
        ]
    )
    report = a.push()
    assert report.pushed == 60 and report.dead_lettered == 0
    assert set(statuses) == {200} and len(sizes) == report.batches > 2
    largest = report.bytes // report.pushed * 2  # more than one more mutation adds
    assert all(limit - largest < size <= limit for size in sizes[:-1])
    assert sizes[-1] <= limit


def test_a_read_only_device_pulls_but_cannot_push(
    tmp_path: Path, embedder: OnnxEmbedder, sync_server: SyncServer
) -> None:
    writer = _replica(tmp_path, embedder, "w", sync_server.url, sync_server.admin_key)
    writer.store.remember("Incident reviews happen on Fridays")
    writer.push()
    reader = _replica(tmp_path, embedder, "r", sync_server.url, sync_server.new_key(["read"]))
    assert reader.pull().applied == 1
    reader.store.remember("A note the reader may not share")
    with pytest.raises(Forbidden):
        reader.push()
    with reader.store.db.read() as conn:
        assert outbox.count(conn) >= 1  # kept for when the key allows it


def test_the_server_filters_pulls_by_blind_scope_tag(
    tmp_path: Path, embedder: OnnxEmbedder, sync_server: SyncServer
) -> None:
    a = _replica(tmp_path, embedder, "a", sync_server.url, sync_server.admin_key)
    a.store.remember("Alpha uses gRPC", project="alpha")
    a.store.remember("Beta uses REST", project="beta")
    a.push()
    store = Store(Database(tmp_path / "b.db"), embedder, project="p")
    remote = HttpRemote(sync_server.url, sync_server.admin_key, device_id=store.device_id())
    b = Syncer(store, remote, keys_for(remote), SyncRules(include_projects=("beta",)))
    assert b.pull().received == 1
    assert [m.content for m in store.list()] == ["Beta uses REST"]
    scopes = {m.scope for m in remote.pull(None).mutations}
    assert len(scopes) == 2 and scopes.isdisjoint({"alpha", "beta", None})
