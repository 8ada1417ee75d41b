"""The fault proxy does to real traffic what it says: each fault, on a real sync server."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

from cairn.errors import RemoteUnreachable
from cairn.protocol import WireMutation
from cairn.remotes.http import HttpRemote
from cairn.server.context import now_ms

from ..conftest import SyncServer, envelope
from .proxy import FaultProxy, Rates

QUIET = Rates(delay=0, drop=0, truncate=0, reset=0, duplicate=0)


def _mutation(n: int) -> WireMutation:
    return WireMutation(
        f"m-{n:04d}",
        "dev-a",
        f"{1_700_000_000_000 + n:013d}-0000-dev-a",
        f"e-{n}",
        None,
        envelope(b"x" * 300),
    )


@pytest.fixture
def proxied(sync_server: SyncServer) -> Iterator[tuple[FaultProxy, HttpRemote, HttpRemote]]:
    """A proxy in front of the server, a client through it and one straight to the server."""
    port = urlparse(sync_server.url).port
    assert port is not None
    proxy = FaultProxy(port, random.Random(7), QUIET).start()
    through = HttpRemote(proxy.url, sync_server.admin_key, timeout=5)
    direct = HttpRemote(sync_server.url, sync_server.admin_key)
    yield proxy, through, direct
    through.close()
    direct.close()
    proxy.stop()


def test_a_calm_proxy_passes_everything_and_reports_each_exchange(
    proxied: tuple[FaultProxy, HttpRemote, HttpRemote],
) -> None:
    proxy, through, direct = proxied
    heard: list[tuple[str, int]] = []
    proxy.hook = lambda event, number: heard.append((event, number))
    assert through.push([_mutation(1), _mutation(2)]).stored == 2
    assert [m.mutation_id for m in through.pull(None).mutations] == ["m-0001", "m-0002"]
    # The proxy reports an answer once it has passed it on, so the client may read it first.
    deadline = time.monotonic() + 10
    while len(heard) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert heard == [("request", 1), ("response", 1), ("request", 2), ("response", 2)]
    assert sum(proxy.faults.values()) == 0


def test_a_truncated_answer_fails_the_push_after_the_server_stored_it(
    proxied: tuple[FaultProxy, HttpRemote, HttpRemote],
) -> None:
    proxy, through, direct = proxied
    proxy.rates = Rates(delay=0, drop=0, truncate=1.0, reset=0, duplicate=0)
    with pytest.raises(RemoteUnreachable):
        through.push([_mutation(1)])
    assert proxy.faults["truncate"] == 1
    assert [m.mutation_id for m in direct.pull(None).mutations] == ["m-0001"]  # the lost ack


def test_a_request_reset_midway_stores_nothing(
    proxied: tuple[FaultProxy, HttpRemote, HttpRemote],
) -> None:
    proxy, through, direct = proxied
    proxy.rates = Rates(delay=0, drop=0, truncate=0, reset=1.0, duplicate=0, on_answer=0.0)
    with pytest.raises(RemoteUnreachable):
        through.push([_mutation(n) for n in range(5)])  # far longer than any cut
    assert proxy.faults["reset"] == 1
    assert direct.pull(None).mutations == []


def test_a_dropped_exchange_fails_after_the_hold(
    proxied: tuple[FaultProxy, HttpRemote, HttpRemote],
) -> None:
    proxy, through, direct = proxied
    proxy.rates = Rates(delay=0, drop=1.0, truncate=0, reset=0, duplicate=0, max_hold=0.2)
    with pytest.raises(RemoteUnreachable):
        through.pull(None)
    assert proxy.faults["drop"] == 1
    proxy.calm = True
    assert through.pull(None).mutations == []  # a new connection goes through


def test_a_duplicated_push_reaches_the_server_twice_and_is_stored_once(
    sync_server: SyncServer, proxied: tuple[FaultProxy, HttpRemote, HttpRemote]
) -> None:
    proxy, through, direct = proxied
    proxy.rates = Rates(delay=0, drop=0, truncate=0, reset=0, duplicate=1.0)
    assert through.push([_mutation(1)]).stored == 1
    proxy.calm = True
    pushes = 0
    for _ in range(100):  # the replay runs beside the client: wait for the server to count it
        [day] = sync_server.storage.usage(sync_server.workspace.id, 1, now_ms()).days
        pushes = day.pushes
        if pushes == 2:
            break
        time.sleep(0.05)
    assert pushes == 2
    assert proxy.faults["duplicate"] == 1
    assert [m.mutation_id for m in direct.pull(None).mutations] == ["m-0001"]
