"""Autosync: the background worker against a real sync server (in-process uvicorn)."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from cairn.autosync import Backoff, Worker, read_status
from cairn.embedding.onnx import OnnxEmbedder
from cairn.remotes.http import HttpRemote
from cairn.server import keys
from cairn.server.app import create_app
from cairn.server.context import ServerSettings
from cairn.server.sqlite_storage import SqliteStorage
from cairn.service import Store
from cairn.store import lease
from cairn.store.clock import now_ms
from cairn.store.db import Database
from cairn.syncing import Syncer
from cairn.workspace_keys import join

from .conftest import FAST_KDF, PASSPHRASE


def wait_for(check: Callable[[], object], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not true within {seconds} s: {check}"
        time.sleep(0.05)


class Server:
    """A sync server on a fixed port that can be stopped and started again (same data)."""

    def __init__(self, data: Path) -> None:
        self.storage = SqliteStorage(data / "server.db")
        self.workspace, self.admin_key = keys.create_workspace(self.storage, "test", now_ms())
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        config = uvicorn.Config(
            create_app(self.storage, ServerSettings(rate_limit=0)),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        wait_for(lambda: self._server is not None and self._server.started, 30)

    def stop(self) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._server.force_exit = True  # long-polls must not hold the shutdown up
        self._thread.join(15)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    made = Server(tmp_path / "server")
    made.start()
    yield made
    if made._thread is not None and made._thread.is_alive():
        made.stop()
    made.storage.close()


class Device:
    """A store with a worker; ``requests`` counts every HTTP request its remotes sent."""

    def __init__(self, path: Path, embedder: OnnxEmbedder, server: Server, key: str) -> None:
        self.store = Store(Database(path), embedder, project="p")
        self.requests = 0
        self.server, self.key = server, key
        self.keys = join(self._remote(), PASSPHRASE, kdf=FAST_KDF)[0]
        self.worker = Worker(
            self.store,
            lambda: Syncer(self.store, self._remote(), self.keys),
            debounce=0.2,
            long_poll=1.0,
            tick=0.05,
            backoff=Backoff(base=0.2, cap=1.0, rng=random.Random(7)),
        )

    def _remote(self) -> HttpRemote:
        remote = HttpRemote(self.server.url, self.key, self.store.device_id(), timeout=3.0)
        remote._client.event_hooks = {"request": [self._count]}
        return remote

    def _count(self, _request: httpx.Request) -> None:
        self.requests += 1

    def contents(self) -> set[str]:
        return {m.content for m in self.store.list(limit=1000)}

    def close(self) -> None:
        self.worker.stop()
        self.store.close()


@pytest.fixture
def devices(
    tmp_path: Path, embedder: OnnxEmbedder, server: Server
) -> Iterator[Callable[[str], Device]]:
    made: list[Device] = []

    def make(name: str, key: str | None = None) -> Device:
        device = Device(tmp_path / f"{name}.db", embedder, server, key or server.admin_key)
        made.append(device)
        return device

    yield make
    for device in made:
        device.close()


def test_a_memory_reaches_the_other_device_within_seconds_without_a_sync_command(
    devices: Callable[[str], Device],
) -> None:
    a, b = devices("a"), devices("b")
    a.worker.start()
    b.worker.start()
    written = a.store.remember("The billing service retries webhooks three times").memory
    started = time.monotonic()
    wait_for(lambda: b.store.recall("how often are webhooks retried?", limit=1))
    hits = b.store.recall("how often are webhooks retried?", limit=1)
    assert hits[0].memory.id == written.id
    assert time.monotonic() - started < 10
    b.store.remember("Webhook retries back off exponentially")
    wait_for(lambda: "Webhook retries back off exponentially" in a.contents())
    for device in (a, b):
        wait_for(lambda d=device: read_status(d.store)["phase"] == "healthy")  # type: ignore[misc]
        status = read_status(device.store)
        assert status["worker_running"] and status["pending"] == 0


def test_offline_work_continues_backs_off_and_drains_when_the_server_returns(
    devices: Callable[[str], Device], server: Server
) -> None:
    a, b = devices("a"), devices("b")
    a.worker.start()
    b.worker.start()
    a.store.remember("Written while online")
    wait_for(lambda: "Written while online" in b.contents())

    server.stop()
    a.store.remember("Written while the server is down")  # never waits on the network
    # (The long-poll cut off by the shutdown may fail first with another transient reason.)
    wait_for(lambda: read_status(a.store)["reason"] == "unreachable")
    status = read_status(a.store)
    assert status["phase"] == "backoff" and status["pending"] == 1
    assert status["retry_at"] is not None

    server.start()
    wait_for(lambda: "Written while the server is down" in b.contents(), 20)
    wait_for(lambda: read_status(a.store)["pending"] == 0)
    assert (
        a.contents() == b.contents() == {"Written while online", "Written while the server is down"}
    )


def test_a_revoked_key_stops_retrying_and_keeps_pending_changes(
    devices: Callable[[str], Device], server: Server
) -> None:
    made, token = keys.issue(server.storage, server.workspace.id, "laptop", ["write"], now_ms())
    a = devices("a", token)
    a.worker.start()
    a.store.remember("Synced before the key was revoked")
    wait_for(lambda: read_status(a.store)["pending"] == 0)
    server.storage.revoke_key(server.workspace.id, made.id, now_ms())
    a.store.remember("Written after the key was revoked")
    wait_for(lambda: read_status(a.store)["reason"] == "auth_failed")
    status = read_status(a.store)
    assert status["phase"] == "degraded" and status["pending"] == 1
    before = a.requests
    time.sleep(3)  # with base 0.2 s backoff, a retry loop would send dozens of requests here
    assert a.requests - before <= 2  # at most the long-poll in flight when the key died
    assert read_status(a.store)["pending"] == 1


def test_only_one_worker_syncs_a_store_and_a_crashed_owner_hands_over(tmp_path: Path) -> None:
    db = Database(tmp_path / "store.db")
    try:
        with db.write() as conn:
            assert lease.acquire(conn, "first", now=1_000, ttl_ms=500)
            assert not lease.acquire(conn, "second", now=1_200, ttl_ms=500)
            assert lease.acquire(conn, "first", now=1_300, ttl_ms=500)  # renewal
            assert lease.holder(conn, 1_700) == lease.Lease("first", 1_800)
            # "first" crashed: it never renews, so its claim runs out.
            assert lease.holder(conn, 1_800) is None
            assert lease.acquire(conn, "second", now=1_801, ttl_ms=500)
            lease.release(conn, "first")  # not the holder: changes nothing
            assert lease.holder(conn, 1_900) == lease.Lease("second", 2_301)
            lease.release(conn, "second")
            assert lease.holder(conn, 1_900) is None
    finally:
        db.close()


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    backoff = Backoff(base=1.0, cap=300.0, rng=random.Random(1))
    delays = [backoff.next() for _ in range(12)]
    for step, delay in enumerate(delays):
        ceiling = min(300.0, 2.0**step)
        assert ceiling / 2 <= delay <= ceiling
    assert delays[-1] >= 150  # capped at 5 min, never below half of it
    assert backoff.next(at_least=400) == 400  # a server's Retry-After wins when longer
    backoff.reset()
    assert backoff.next() <= 1.0
