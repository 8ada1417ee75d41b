"""Failed authentications over real HTTP: limited per client address and per key id (429 with
Retry-After, valid keys unaffected), audited in aggregate, counted; the limiter's memory bounded.

Different client addresses are real ones: the client binds 127.0.0.2, 127.0.0.3, ... (all of
127.0.0.0/8 is loopback on Linux) and the server sees each as its peer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from cairn.errors import AuthFailed, RateLimited
from cairn.remotes.http import HttpRemote
from cairn.server.context import ServerSettings
from cairn.server.failures import AuthFailures, client_address
from cairn.server.keys import issue
from cairn.server.limits import RateLimiter
from cairn.server.metrics import Metrics
from cairn.server.storage.sqlite import SqliteStorage

SyncServer = Any  # the tests/conftest.py fixture's type (conftest modules are not importable)


@contextmanager
def client_from(server: SyncServer, address: str = "127.0.0.1") -> Iterator[httpx.Client]:
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(base_url=server.url, transport=transport, timeout=30) as client:
        yield client


def status(client: httpx.Client, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.get("/v1/sync/status", headers=headers).status_code


def wrong_secret(token: str, n: int = 0) -> str:
    """The same key id with another secret."""
    return token.rsplit("_", 1)[0] + f"_{'W' * 40}{n:04d}"


def made_up(n: int) -> str:
    """A well-formed key of an id no workspace has."""
    return f"cairn_{n:012x}_{'S' * 43}"


def test_a_flood_of_wrong_secrets_gets_429_and_valid_keys_keep_working(
    sync_server: SyncServer,
) -> None:
    """The defect: 300 wrong secrets at full speed were all answered 401, never limited.
    Default limits: 20 failures at once, then 1 per second, per address and per key id."""
    admin = sync_server.admin_key
    forged = wrong_secret(admin)
    statuses = []
    started = time.monotonic()
    with client_from(sync_server) as client:
        for n in range(300):
            statuses.append(status(client, forged))
            if n % 50 == 0:  # the same key id with its real secret, from the same address
                assert status(client, admin) == 200
        elapsed = time.monotonic() - started
        limited = client.get("/v1/sync/status", headers={"Authorization": f"Bearer {forged}"})
    assert set(statuses) <= {401, 429}
    assert statuses[:20] == [401] * 20  # the burst
    # No more than the burst plus the refill over the time the flood took were answered 401.
    assert statuses.count(401) <= 20 + math.ceil(elapsed) + 1
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["error"]["code"] == "rate_limited"
    assert forged.rsplit("_", 1)[1] not in limited.text
    remote = HttpRemote(sync_server.url, forged)  # the client's own mapping of the answer
    with pytest.raises(RateLimited) as raised:
        remote.status()
    assert raised.value.retry_after >= 1
    remote.close()
    assert HttpRemote(sync_server.url, admin).status()["key"]["scopes"] == ["admin"]


@pytest.fixture
def strict(sync_server_factory: Callable[..., SyncServer]) -> SyncServer:
    """A server allowing 3 failures, then one per 100 s: nothing refills during a test."""
    settings = ServerSettings(rate_limit=0, auth_failure_rate=0.01, auth_failure_burst=3)
    return sync_server_factory(settings)


def test_failures_are_limited_per_client_address(strict: SyncServer) -> None:
    with client_from(strict, "127.0.0.2") as client:
        tries = [status(client, made_up(n)) for n in range(3)] + [status(client, "nonsense")]
        tries.append(status(client, None))
        assert tries == [401, 401, 401, 429, 429]
        assert status(client, strict.admin_key) == 200  # a valid key from that address
    with client_from(strict, "127.0.0.3") as other:
        assert status(other, made_up(99)) == 401  # another address has its own budget


def test_failures_are_limited_per_key_id_across_addresses(strict: SyncServer) -> None:
    writer = strict.new_key(["write"])
    tries = []
    for n in range(5):
        with client_from(strict, f"127.0.0.{10 + n}") as client:
            tries.append(status(client, wrong_secret(writer, n)))
    assert tries == [401, 401, 401, 429, 429]
    with client_from(strict, "127.0.0.20") as client:
        assert status(client, writer) == 200  # the key itself is never locked out
        assert status(client, made_up(7)) == 401  # other key ids are not limited


def audit_entries(server: SyncServer) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{server.url}/v1/audit",
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return [e for e in response.json()["entries"] if e["action"] == "auth_failed"]


def test_failures_reach_the_audit_log_aggregated(
    sync_server_factory: Callable[..., SyncServer],
) -> None:
    """At most one entry per key per interval, whatever the number of failures; failures that
    name no key of the workspace (made-up ids, no key at all) never reach its audit log."""
    interval = 0.3
    server = sync_server_factory(
        ServerSettings(rate_limit=0, auth_failure_burst=10, auth_audit_interval=interval)
    )
    writer = server.new_key(["write"])
    writer_id = writer.split("_")[1]
    started = time.monotonic()
    with client_from(server) as client:
        for n in range(60):
            status(client, wrong_secret(writer, n))
            status(client, made_up(n))
    deadline = time.monotonic() + 30
    while sum(e["detail"]["failures"] for e in audit_entries(server)) < 60:
        assert time.monotonic() < deadline, audit_entries(server)
        time.sleep(0.05)
    entries = audit_entries(server)
    elapsed = time.monotonic() - started
    assert {e["key_id"] for e in entries} == {writer_id}
    assert sum(e["detail"]["failures"] for e in entries) == 60
    assert len(entries) <= math.ceil(elapsed / interval) + 1  # one per interval at most
    assert sum(e["detail"]["limited"] for e in entries) > 0
    assert all(e["detail"]["addresses"] == ["127.0.0.1"] for e in entries)
    assert all(set(e["detail"]["reasons"]) == {"wrong_secret"} for e in entries)
    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert 'cairn_auth_failures_total{reason="unknown_key",limited="true"}' in metrics


def test_the_limiter_forgets_the_oldest_past_its_capacity(tmp_path: Path) -> None:
    """Made-up addresses and key ids cannot grow the state without bound."""
    limiter = RateLimiter(rate=1, burst=2, capacity=100)
    for n in range(10_000):
        limiter.take(n)
    assert len(limiter) == 100
    assert limiter.take(9_999) == 0.0 and limiter.take(9_999) > 0  # recent ones still count

    storage = SqliteStorage(tmp_path / "server.db")
    try:
        failures = AuthFailures(storage, Metrics(), 1, 2, audit_interval=3600, capacity=50)
        workspace = storage.create_workspace("ws-1", "team", 0, "e2e")
        tokens = [issue(storage, workspace.id, f"k{n}", ["read"], 0)[1] for n in range(200)]
        for n, token in enumerate(tokens):
            for _ in range(2):  # the second failure of each key waits for the next flush
                with pytest.raises(AuthFailed, match="not valid"):
                    failures.authenticate(f"Bearer {wrong_secret(token)}", f"192.0.2.{n}")
        assert len(failures.by_address) == len(failures.by_key) == 50
        assert len(failures._pending) == 50 and len(failures._audited) == 50
    finally:
        storage.close()


@pytest.mark.parametrize(
    ("host", "bucket"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        (None, "unknown"),
    ],
)
def test_an_ipv6_client_counts_per_64(host: str | None, bucket: str) -> None:
    assert client_address(host) == bucket
