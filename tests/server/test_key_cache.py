"""The per-process API key cache and the batched last-seen writes, over each real storage."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.server import keys
from cairn.server.key_cache import KeyCache
from cairn.server.seen import LastSeen
from cairn.server.storage import ServerStorage

from ..conftest import server_storage_for

NOW = 1_700_000_000_000


@pytest.fixture
def storage(
    tmp_path: Path, server_backend: str, request: pytest.FixtureRequest
) -> Iterator[ServerStorage]:
    opened = server_storage_for(server_backend, tmp_path, request)
    yield opened
    opened.close()


def reads(storage: ServerStorage) -> int:
    return storage.transactions()["read"]


def test_a_cached_key_costs_no_read_until_it_is_forgotten(storage: ServerStorage) -> None:
    ws = storage.create_workspace("w", "team", NOW)
    key, _ = keys.issue(storage, ws.id, "ci", ["read"], NOW)
    cache = KeyCache(storage, ttl=3600)
    assert cache.find_key(key.id) == key
    before = reads(storage)
    assert [cache.find_key(key.id) for _ in range(5)] == [key] * 5
    assert reads(storage) == before
    storage.revoke_key(ws.id, key.id, NOW + 1)
    assert cache.find_key(key.id) == key  # nobody said: the TTL is the only bound
    cache.forget(key.id)
    found = cache.find_key(key.id)
    assert found is not None and found.revoked_at == NOW + 1
    assert len(cache) == 0  # a revoked key is not kept: each use reads, and is refused
    assert cache.find_key("000000000000") is None and len(cache) == 0


def test_a_refresh_reads_every_cached_key_at_once_and_drops_the_revoked(
    storage: ServerStorage,
) -> None:
    ws = storage.create_workspace("w", "team", NOW)
    made = [keys.issue(storage, ws.id, f"k{n}", ["read"], NOW)[0] for n in range(3)]
    cache = KeyCache(storage, ttl=3600)
    for key in made:
        cache.find_key(key.id)
    storage.revoke_key(ws.id, made[1].id, NOW + 1)
    before = reads(storage)
    cache.refresh()
    assert reads(storage) == before + 1
    assert len(cache) == 2
    revoked = cache.find_key(made[1].id)
    assert revoked is not None and revoked.revoked_at == NOW + 1


def test_no_cache_with_a_ttl_of_zero(storage: ServerStorage) -> None:
    ws = storage.create_workspace("w", "team", NOW)
    key, _ = keys.issue(storage, ws.id, "ci", ["read"], NOW)
    cache = KeyCache(storage, ttl=0)
    before = reads(storage)
    for _ in range(3):
        assert cache.find_key(key.id) == key
    assert reads(storage) == before + 3 and len(cache) == 0


def test_last_seen_is_written_in_one_batch_and_moves_forward(storage: ServerStorage) -> None:
    """200 devices and a key seen: one write. Seen again later: written at the next due flush,
    the times moved on; nothing due is not written at all."""
    ws = storage.create_workspace("w", "team", NOW)
    key, _ = keys.issue(storage, ws.id, "ci", ["read"], NOW)
    seen = LastSeen(storage, interval=3600)
    for n in range(200):
        seen.key_used(ws.id, key.id, NOW + n)
        seen.device_pulled(ws.id, f"dev-{n:03d}", NOW + n)
    assert seen.due()  # new to this process: written within a second
    writes = storage.transactions()["write"]
    seen.flush()
    assert storage.transactions()["write"] == writes + 1
    assert len(storage.devices(ws.id)) == 200
    found = storage.find_key(key.id)
    assert found is not None and found.last_used_at == NOW + 199

    seen.device_pulled(ws.id, "dev-000", NOW + 500)
    seen.key_used(ws.id, key.id, NOW + 500)
    assert not seen.due()  # known to this process: waits for the interval
    seen.interval = 0
    assert seen.due()
    seen.flush()
    assert storage.devices(ws.id)[0].last_pull_at == NOW + 500
    found = storage.find_key(key.id)
    assert found is not None and found.last_used_at == NOW + 500
    writes = storage.transactions()["write"]
    seen.flush()
    assert not seen.due() and storage.transactions()["write"] == writes


def test_the_periodic_refresh_and_flush_run_while_the_server_serves(
    storage: ServerStorage,
) -> None:
    ws = storage.create_workspace("w", "team", NOW)
    key, _ = keys.issue(storage, ws.id, "ci", ["read"], NOW)
    cache = KeyCache(storage, ttl=0.05)
    seen = LastSeen(storage, interval=3600)
    cache.find_key(key.id)
    seen.device_pulled(ws.id, "dev-a", NOW)
    storage.revoke_key(ws.id, key.id, NOW + 1)

    async def run() -> None:
        tasks = [asyncio.create_task(cache.run()), asyncio.create_task(seen.run())]
        for _ in range(300):
            if len(cache) == 0 and storage.devices(ws.id):
                break
            await asyncio.sleep(0.01)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())
    assert len(cache) == 0
    assert [d.device_id for d in storage.devices(ws.id)] == ["dev-a"]
