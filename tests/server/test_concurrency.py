"""Concurrent pushes and pulls through real HTTP: no gaps, no repeats, nothing lost."""

from __future__ import annotations

import threading
import time
from typing import Any

from cairn.protocol import WireMutation
from cairn.remotes.http import HttpRemote

from ..conftest import envelope

SyncServer = Any  # the tests/conftest.py fixture's type (conftest modules are not importable)

PUSHERS, BATCHES, BATCH = 4, 8, 25
PULLERS = 3


def batch(device: str, number: int) -> list[WireMutation]:
    return [
        WireMutation(
            f"{device}-{number}-{i}",
            device,
            f"{1_700_000_000_000 + number:013d}-{i:04x}-{device}",
            f"e-{i}",
            None,
            envelope(f"{device} {number} {i}".encode()),
        )
        for i in range(BATCH)
    ]


def test_pullers_see_every_acknowledged_mutation_once_in_gapless_order(
    sync_server: SyncServer,
) -> None:
    acknowledged: set[str] = set()
    pushed = threading.Event()
    lock = threading.Lock()
    failures: list[BaseException] = []

    def pusher(device: str) -> None:
        remote = HttpRemote(sync_server.url, sync_server.admin_key, device_id=device)
        try:
            for number in range(BATCHES):
                mutations = batch(device, number)
                remote.push(mutations)
                if number % 3 == 0:  # a retried batch must not be stored twice
                    assert remote.push(mutations).stored == 0
                with lock:
                    acknowledged.update(m.mutation_id for m in mutations)
        except BaseException as exc:
            failures.append(exc)
        finally:
            remote.close()

    seen: list[list[WireMutation]] = [[] for _ in range(PULLERS)]

    def puller(index: int) -> None:
        remote = HttpRemote(sync_server.url, sync_server.admin_key)
        cursor: str | None = None
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                done = pushed.is_set()  # read before the pull: that pull then sees every push
                page = remote.pull(cursor, limit=17 + index * 11, wait=0.2)
                seen[index].extend(page.mutations)
                cursor = page.cursor
                if done and not page.has_more:
                    return
        except BaseException as exc:
            failures.append(exc)
        finally:
            remote.close()

    pullers = [threading.Thread(target=puller, args=(i,)) for i in range(PULLERS)]
    pushers = [threading.Thread(target=pusher, args=(f"dev-{i}",)) for i in range(PUSHERS)]
    for thread in pullers + pushers:
        thread.start()
    for thread in pushers:
        thread.join()
    pushed.set()
    for thread in pullers:
        thread.join()

    assert failures == []
    total = PUSHERS * BATCHES * BATCH
    assert len(acknowledged) == total
    for mutations in seen:
        assert [m.seq for m in mutations] == list(range(1, total + 1))
        assert {m.mutation_id for m in mutations} == acknowledged
