"""Autosync: the background worker against a real sync server (in-process uvicorn)."""

from __future__ import annotations

import json
import random
import signal
import socket
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.errors import (
    AuthFailed,
    Forbidden,
    KeyMismatch,
    QuotaExceeded,
    RateLimited,
    RemoteUnreachable,
    SyncError,
    SyncNotConfigured,
)
from cairn.protocol import PullPage, PushResult, WireMutation
from cairn.remotes.http import HttpRemote
from cairn.remotes.memory import MemoryRemote
from cairn.server import keys
from cairn.server.app import create_app
from cairn.server.context import ServerSettings
from cairn.server.storage.sqlite import SqliteStorage
from cairn.store import lease, replica
from cairn.store.clock import now_ms
from cairn.store.db import Database
from cairn.store.sync_state import ROUND
from cairn.sync import handoff
from cairn.sync.backoff import Backoff, classify
from cairn.sync.engine import Syncer
from cairn.sync.keys import join
from cairn.sync.status import WorkerStatus, read_status
from cairn.sync.worker import Worker

from .conftest import FAST_KDF, PASSPHRASE


def wait_for(check: Callable[[], object], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not true within {seconds} s: {check}"
        time.sleep(0.05)


class Server:
    """A sync server on a fixed port that can be stopped and started again (same data)."""

    def __init__(self, data: Path, max_body: int = 8 * 1024 * 1024) -> None:
        self.max_body = max_body
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
            create_app(self.storage, ServerSettings(rate_limit=0, max_body=self.max_body)),
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
    made = Server(tmp_path / "server", max_body=48 * 1024)
    made.start()
    yield made
    if made._thread is not None and made._thread.is_alive():
        made.stop()
    made.storage.close()


class Device:
    """A store with a worker; ``requests`` counts every HTTP request its remotes sent."""

    def __init__(
        self, path: Path, embedder: OnnxEmbedder, server: Server, key: str, **options: Any
    ) -> None:
        self.store = Store(Database(path), embedder, project="p")
        self.requests = 0
        self.server, self.key = server, key
        self.keys = join(self._remote(), PASSPHRASE, kdf=FAST_KDF)[0]
        self.worker = Worker(
            self.store,
            self.connect,
            **{
                "debounce": 0.2,
                "long_poll": 1.0,
                "tick": 0.05,
                "backoff": Backoff(base=0.2, cap=1.0, rng=random.Random(7)),
                **options,
            },
        )

    def connect(self) -> Syncer:
        return Syncer(self.store, self._remote(), self.keys)

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

    def make(name: str, key: str | None = None, **options: Any) -> Device:
        device = Device(
            tmp_path / f"{name}.db", embedder, server, key or server.admin_key, **options
        )
        made.append(device)
        return device

    yield make
    for device in made:
        device.close()


def never_connect() -> Syncer:
    raise AssertionError("synced beside the worker that holds the lease")


def round_record(store: Store) -> dict[str, Any]:
    with store.db.read() as conn:
        raw = replica.get_meta(conn, ROUND)
    assert raw is not None
    record: dict[str, Any] = json.loads(raw)
    return record


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


def test_a_change_the_remote_refuses_shows_its_reason_and_the_rest_still_syncs(
    devices: Callable[..., Device],
) -> None:
    a, b = devices("a"), devices("b")
    a.worker.start()
    b.worker.start()
    rng = random.Random(5)
    # Printable ASCII at random: ~51 KB compressed, over 48 KiB even as raw bytes (binary pages).
    alphabet = string.ascii_letters + string.digits + string.punctuation
    noise = "".join(rng.choice(alphabet) for _ in range(62_000))
    a.store.remember("A long design note that does not compress: " + noise)
    a.store.remember("The cache TTL is ten minutes")
    wait_for(lambda: read_status(a.store)["reason"] == "payload_too_large")
    status = read_status(a.store)
    assert status["phase"] == "degraded" and status["dead_letters"] == 1
    assert "cairn sync dead-letters" in status["message"]
    wait_for(lambda: "The cache TTL is ten minutes" in b.contents())


def revoke(server: Server, key_id: str) -> None:
    """Revokes a key as an admin does, through the server (which drops it from its key cache)."""
    answer = httpx.delete(
        f"{server.url}/v1/auth/keys/{key_id}",
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text


def test_a_revoked_key_stops_retrying_and_keeps_pending_changes(
    devices: Callable[[str], Device], server: Server
) -> None:
    made, token = keys.issue(server.storage, server.workspace.id, "laptop", ["write"], now_ms())
    a = devices("a", token)
    a.worker.start()
    a.store.remember("Synced before the key was revoked")
    wait_for(lambda: read_status(a.store)["pending"] == 0)
    revoke(server, made.id)
    a.store.remember("Written after the key was revoked")
    wait_for(lambda: read_status(a.store)["reason"] == "auth_failed")
    status = read_status(a.store)
    assert status["phase"] == "degraded" and status["pending"] == 1
    before = a.requests
    time.sleep(3)  # with base 0.2 s backoff, a retry loop would send dozens of requests here
    assert a.requests - before <= 2  # at most the long-poll in flight when the key died
    assert read_status(a.store)["pending"] == 1


def test_sync_now_asks_the_worker_that_holds_the_lease(
    devices: Callable[..., Device],
) -> None:
    a, b = devices("a", debounce=60, max_delay=60), devices("b")  # a pushes only when asked
    a.worker.start()
    b.worker.start()
    wait_for(lambda: read_status(a.store)["worker_running"])
    a.store.remember("The nightly export runs at 03:00 UTC")
    time.sleep(0.5)
    assert read_status(a.store)["pending"] == 1  # the debounce holds it back

    report = handoff.sync_now(a.store, never_connect)  # as another process would ask
    assert report["push"]["pushed"] == 1
    assert set(report) == {"push", "pull", "push_after_pull"}
    assert round_record(a.store)["by"] == a.worker.owner
    wait_for(lambda: "The nightly export runs at 03:00 UTC" in b.contents())
    again = handoff.sync_now(a.store, never_connect)  # each request gets its own round
    assert again["push"]["pushed"] == 0
    assert round_record(a.store)["served"] == 2


def test_sync_now_cuts_a_backoff_short_and_reports_the_failure(
    devices: Callable[..., Device], server: Server
) -> None:
    slow = Backoff(base=60.0, cap=60.0, rng=random.Random(3))  # would wait a minute
    a = devices("a", backoff=slow)
    a.worker.start()
    wait_for(lambda: read_status(a.store)["worker_running"])
    server.stop()
    a.store.remember("Written while the server is down")
    wait_for(lambda: read_status(a.store)["phase"] == "backoff")
    with pytest.raises(RemoteUnreachable):
        handoff.sync_now(a.store, never_connect)
    server.start()
    started = time.monotonic()
    report = handoff.sync_now(a.store, never_connect)
    assert report["push"]["pushed"] == 1
    assert time.monotonic() - started < 10  # not the minute of backoff
    assert read_status(a.store)["phase"] == "healthy"


def test_sync_now_without_a_worker_syncs_itself_under_the_lease(
    devices: Callable[..., Device],
) -> None:
    a = devices("a")  # its worker is never started
    a.store.remember("Deploy freezes start on the 20th of December")
    holders: list[str | None] = []

    def progress(_done: int, _total: int) -> None:
        with a.store.db.read() as conn:
            live = lease.holder(conn, now_ms())
        holders.append(live.owner if live else None)

    report = handoff.sync_now(a.store, a.connect, "push", progress=progress)
    assert report == {"push": report["push"]} and report["push"]["pushed"] == 1
    assert holders and all(h is not None and ":push:" in h for h in holders)
    with a.store.db.read() as conn:
        assert lease.holder(conn, now_ms()) is None  # released


def test_a_sync_now_on_a_worker_blocked_by_a_revoked_key_tries_once_and_raises(
    devices: Callable[..., Device], server: Server
) -> None:
    made, token = keys.issue(server.storage, server.workspace.id, "laptop", ["write"], now_ms())
    a = devices("a", token)
    a.worker.start()
    wait_for(lambda: read_status(a.store)["phase"] == "healthy")
    revoke(server, made.id)
    a.store.remember("Written after the key was revoked")
    wait_for(lambda: read_status(a.store)["reason"] == "auth_failed")
    before = a.requests
    with pytest.raises(AuthFailed):
        handoff.sync_now(a.store, never_connect)
    assert 1 <= a.requests - before <= 3  # one more try, as asked; no storm after it
    assert read_status(a.store)["pending"] == 1


def test_a_standby_worker_waits_and_leaves_the_holders_status_alone(
    devices: Callable[..., Device],
) -> None:
    a = devices("a")
    a.worker.start()
    wait_for(lambda: read_status(a.store)["worker_running"])
    heard: list[WorkerStatus] = []
    standby = Worker(a.store, never_connect, tick=0.05, on_status=heard.append).start()
    try:
        wait_for(lambda: any(s.reason == "other_worker" for s in heard))
        a.store.remember("Pushed by the holder while another worker stands by")
        wait_for(lambda: read_status(a.store)["pending"] == 0)
        status = read_status(a.store)
        assert status["owner"] == a.worker.owner and status["worker_running"]
    finally:
        standby.stop()
    assert read_status(a.store)["owner"] == a.worker.owner  # its stop changed nothing shared
    assert [s.phase for s in heard] == ["idle", "idle"]  # standing by, then stopped


class _NoLongPoll(MemoryRemote):
    """Object storage's behaviour: a pull answers at once; ``waits`` records what was asked."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    @property
    def supports_long_poll(self) -> bool:
        return False

    def pull(
        self,
        cursor: str | None,
        limit: int = 1000,
        scopes: Sequence[str] | None = None,
        wait: float = 0.0,
    ) -> PullPage:
        self.waits.append(wait)
        return super().pull(cursor, limit, scopes, 0.0)


def test_a_remote_without_long_poll_is_pulled_by_interval(
    tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    remote = _NoLongPoll()
    keys_ = join(remote, PASSPHRASE, kdf=FAST_KDF)[0]
    a_store = Store(Database(tmp_path / "a.db"), embedder, project="p")
    b_store = Store(Database(tmp_path / "b.db"), embedder, project="p")
    heard: list[WorkerStatus] = []
    worker = Worker(
        b_store,
        lambda: Syncer(b_store, remote, keys_, page_size=7),
        poll_interval=0.5,
        tick=0.05,
        on_status=heard.append,
    )
    try:
        for i in range(20):
            a_store.remember(f"Release {i} is tagged from the main branch")
        Syncer(a_store, remote, keys_).push()
        worker.start()
        wait_for(lambda: b_store.count() == 20, 5)
        # A backlog of pages shows as pulling, then healthy with what arrived.
        wait_for(lambda: heard[-1].phase == "healthy")
        assert "pulling" in [s.phase for s in heard]
        assert heard[-1].message == "pulled 20"
        polls = len(remote.waits)
        time.sleep(1.6)
        assert 2 <= len(remote.waits) - polls <= 5  # about one pull per 0.5 s
        assert set(remote.waits) == {0.0}  # never a long-poll
    finally:
        worker.stop()
        a_store.close()
        b_store.close()


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


def test_the_lease_of_a_process_that_died_is_taken_at_once(tmp_path: Path) -> None:
    """A `cairn sync now` killed mid-sync (SIGKILL, the OOM killer) leaves its lease behind; the
    next sync on this machine takes it at once instead of waiting out the 15 s it had left
    (found by tests/faults: the re-run sat silent that long). A live holder still keeps it."""
    db = Database(tmp_path / "store.db")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from cairn.sync import handoff\n"
            "from cairn.device_store import Store\n"
            "from pathlib import Path\n"
            "from cairn.store.db import Database\n"
            "store = Store(Database(Path(sys.argv[1])), None)  # the lease needs no embedder\n"
            "with handoff.holding(store, handoff.new_owner('now')) as held:\n"
            "    print('held' if held else 'refused', flush=True)\n"
            "    time.sleep(120)\n",
            str(tmp_path / "store.db"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        store = Store(db, None)  # type: ignore[arg-type]
        with handoff.holding(store, handoff.new_owner("now")) as held:
            assert not held  # a live process's lease is its own
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        with db.read() as conn:
            assert lease.holder(conn, now_ms()) is not None  # its claim has not run out...
        with handoff.holding(store, handoff.new_owner("now")) as held:
            assert held  # ...yet nobody holds it any more
    finally:
        holder.kill()
        holder.wait(10)
        db.close()


@pytest.mark.parametrize(
    ("failure", "permanent", "reason"),
    [
        (RemoteUnreachable("down"), False, "unreachable"),
        (RateLimited("slow down", retry_after=5), False, "rate_limited"),
        (SyncError("the server failed"), False, "sync_failed"),
        (RuntimeError("a bug"), False, "internal"),
        (AuthFailed("revoked"), True, "auth_failed"),
        (Forbidden("read-only key"), True, "forbidden"),
        (KeyMismatch("another workspace"), True, "key_mismatch"),
        (QuotaExceeded("over quota"), True, "quota_exceeded"),
        (SyncNotConfigured("not set up"), True, "sync_not_configured"),
    ],
)
def test_failures_are_classified_transient_or_permanent(
    failure: Exception, permanent: bool, reason: str
) -> None:
    assert classify(failure) == (permanent, reason)


class _OverQuota(MemoryRemote):
    """A remote whose workspace is over its quota (the server side is issue 5's)."""

    def __init__(self) -> None:
        super().__init__()
        self.pushes = 0

    def push(self, mutations: Sequence[WireMutation]) -> PushResult:
        self.pushes += 1
        raise QuotaExceeded("the workspace is over its quota of 1000 memories")


def test_a_quota_refusal_stops_pushing_and_keeps_the_changes(
    tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    remote = _OverQuota()
    keys_ = join(remote, PASSPHRASE, kdf=FAST_KDF)[0]
    store = Store(Database(tmp_path / "a.db"), embedder, project="p")
    worker = Worker(store, lambda: Syncer(store, remote, keys_), debounce=0.1, tick=0.05)
    try:
        worker.start()
        store.remember("Over quota, this waits in the outbox")
        wait_for(lambda: read_status(store)["reason"] == "quota_exceeded")
        status = read_status(store)
        assert status["phase"] == "degraded" and status["pending"] == 1
        pushes = remote.pushes
        time.sleep(1.0)
        assert remote.pushes == pushes  # not retried until the settings change
    finally:
        worker.stop()
        store.close()


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
