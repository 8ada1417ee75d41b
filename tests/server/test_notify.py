"""Long-polls hear of pushes from other processes and hosts, and wait without holding resources.

Every test sets the safety re-read (``recheck``) far beyond the long-poll's ``wait``: a long-poll
that answers with the new mutation was woken by a notification, never by the re-read. Wake-up
latencies are printed (run with ``-s``) and benchmarked, not asserted.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from cairn.protocol import WireMutation
from cairn.remotes.http import HttpRemote
from cairn.server import backends, keys
from cairn.server.app import create_app, raise_open_files
from cairn.server.context import ServerSettings, now_ms
from cairn.server.notify.postgres import APPLICATION
from cairn.server.notify.unix import UnixNotifier
from cairn.server.storage import ServerStorage
from cairn.server.storage.sqlite import SqliteStorage

from ..conftest import envelope, serve
from .test_server_cli import env, ok_json, serving  # noqa: F401  (env is a fixture)

TRIALS = 20
WAIT = 30.0
"""A long-poll's wait: far below the re-read below, so only a notification can answer it."""
RECHECK = "600"


def mutation(n: int) -> WireMutation:
    return WireMutation(
        f"m-{n}", "dev-a", f"{1_700_000_000_000 + n:013d}-0000-dev-a", "e", None, envelope()
    )


def waiting(url: str) -> int:
    """Long-polls waiting in the server process behind ``url``."""
    text = httpx.get(f"{url}/metrics", timeout=120).text  # behind thousands of requests
    found = re.search(r"^cairn_long_polls_waiting (\d+)$", text, re.MULTILINE)
    assert found, text
    return int(found.group(1))


def until_waiting(url: str, count: int) -> None:
    deadline = time.monotonic() + 120
    while waiting(url) < count:
        assert time.monotonic() < deadline, f"fewer than {count} long-polls ever waited"
        time.sleep(0.02)


def long_poll(remote: HttpRemote, cursor: str | None, answer: list[Any]) -> None:
    """Adds to ``answer`` the page a long-poll after ``cursor`` gets, and when it came."""
    answer.append((remote.pull(cursor, wait=WAIT), time.monotonic()))


def wake_ups(reader_url: str, writer_url: str, token: str, confirm: bool) -> list[float]:
    """Seconds from each push (through ``writer_url``) to the answer of a long-poll waiting at
    ``reader_url``; ``confirm``: see it wait first (the reader's own metrics)."""
    latencies: list[float] = []
    cursor = HttpRemote(reader_url, token).pull(None).cursor
    for n in range(TRIALS):
        answer: list[Any] = []
        reader = HttpRemote(reader_url, token)  # a fresh connection: any worker may take it
        waiter = threading.Thread(target=long_poll, args=(reader, cursor, answer))
        waiter.start()
        if confirm:
            until_waiting(reader_url, 1)
        else:
            time.sleep(0.3)
        writer = HttpRemote(writer_url, token)
        pushed = time.monotonic()
        assert writer.push([mutation(n)]).stored == 1
        waiter.join(timeout=WAIT + 10)
        page, answered = answer[0]
        assert [m.mutation_id for m in page.mutations] == [f"m-{n}"]
        latencies.append(answered - pushed)
        cursor = page.cursor
        reader.close()
        writer.close()
    p50, p95 = statistics.median(latencies), statistics.quantiles(latencies, n=20)[-1]
    print(f"\nwake-up over {TRIALS} pushes: p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms")
    return latencies


def test_a_push_through_one_worker_wakes_a_long_poll_on_another(env: dict[str, str]) -> None:  # noqa: F811
    """`--workers 2`: each long-poll and push take a fresh connection, so about half the trials
    cross workers; every one is answered by its push, long before the re-read."""
    made = ok_json(env, "workspace", "create", "team")
    assert isinstance(made, dict)
    with serving(env, "--workers", "2", "--recheck", RECHECK) as (url, _process):
        assert len(wake_ups(url, url, made["key"], confirm=False)) == TRIALS


def test_a_push_to_one_server_wakes_a_long_poll_on_another(env: dict[str, str]) -> None:  # noqa: F811
    """Two `cairn server run` processes on different ports over one database (two hosts on
    PostgreSQL; on SQLite, two servers of one data folder): every long-poll on one is answered
    by a push to the other."""
    made = ok_json(env, "workspace", "create", "team")
    assert isinstance(made, dict)
    with (
        serving(env, "--recheck", RECHECK) as (reader_url, _reader),
        serving(env, "--recheck", RECHECK) as (writer_url, _writer),
    ):
        assert len(wake_ups(reader_url, writer_url, made["key"], confirm=True)) == TRIALS


@pytest.fixture
def small_server(
    server_backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[str, str, ServerStorage]]:
    """A server in a thread with its backend's notifier: on PostgreSQL a pool of 2 connections;
    its URL, its workspace's admin key and its storage."""
    db = (
        request.getfixturevalue("postgres").new_database() if server_backend == "postgres" else None
    )
    if db:
        from cairn.server.storage.postgres import PostgresStorage

        storage: ServerStorage = PostgresStorage(db, min_size=1, max_size=2)
    else:
        storage = SqliteStorage(tmp_path / backends.DB_FILE)
    _, token = keys.create_workspace(storage, "team", now_ms())
    settings = ServerSettings(rate_limit=0, recheck=float(RECHECK))
    server, thread, url = serve(
        create_app(storage, settings, notifier=backends.open_notifier(tmp_path, db))
    )
    yield url, token, storage
    server.should_exit = True
    thread.join(timeout=30)
    storage.close()


def test_waiting_long_polls_hold_no_connection_or_thread(
    small_server: tuple[str, str, ServerStorage],
) -> None:
    """50 long-polls wait on a pool of 2 connections (and more than the 40 threads of the
    server's thread pool); a push still goes through, and wakes all 50."""
    url, token, _ = small_server
    answers: list[Any] = []

    def poll() -> None:
        remote = HttpRemote(url, token)
        answers.append(remote.pull(None, wait=WAIT))
        remote.close()

    threads = [threading.Thread(target=poll) for _ in range(50)]
    for thread in threads:
        thread.start()
    until_waiting(url, 50)
    # 10 s: well under the pool's 30 s wait for a free connection, had the waiters held them.
    writer = HttpRemote(url, token, timeout=10)
    assert writer.push([mutation(1)]).stored == 1
    writer.close()
    for thread in threads:
        thread.join(timeout=WAIT + 10)
    assert len(answers) == 50
    assert all([m.mutation_id for m in page.mutations] == ["m-1"] for page in answers)


@pytest.mark.parametrize("server_backend", ["postgres"])
def test_a_long_poll_hears_what_passed_while_the_listener_reconnected(
    small_server: tuple[str, str, ServerStorage], postgres: Any
) -> None:
    """A push that no notification announced (written to the database directly) reaches the
    waiting long-poll once the server's listening connection is cut and comes back."""
    url, token, storage = small_server
    answer: list[Any] = []
    remote = HttpRemote(url, token)
    waiter = threading.Thread(target=lambda: answer.append(remote.pull(None, wait=WAIT)))
    waiter.start()
    until_waiting(url, 1)
    (workspace,) = storage.workspaces()
    storage.push(workspace.id, [mutation(1)], None, now_ms())
    time.sleep(0.5)
    assert waiting(url) == 1  # nothing announced it
    with psycopg.connect(postgres.admin_url, autocommit=True) as admin:
        cut = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = %s AND query LIKE 'LISTEN%%'",
            (APPLICATION, conninfo_to_dict(str(storage.path))["dbname"]),
        ).fetchall()
    assert cut == [(True,)]
    waiter.join(timeout=WAIT + 10)
    remote.close()
    assert [m.mutation_id for m in answer[0].mutations] == ["m-1"]


@pytest.mark.parametrize("count", [2000, pytest.param(5000, marks=pytest.mark.slow)])
def test_one_worker_holds_thousands_of_long_polls(env: dict[str, str], count: int) -> None:  # noqa: F811
    """``count`` long-polls wait at once on one process (each its own connection); one push
    answers every one of them with the mutation."""
    raise_open_files(count + 1000)  # this test's own sockets
    made = ok_json(env, "workspace", "create", "team")
    assert isinstance(made, dict)
    with serving(env, "--recheck", RECHECK, "--rate-limit", "0") as (url, _process):
        port = int(url.rsplit(":", 1)[1])
        request = (
            f"GET /v1/sync/pull?since=0&wait=60 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {made['key']}\r\nConnection: close\r\n\r\n"
        ).encode()

        async def run() -> list[bytes]:
            async def open_one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                await writer.drain()
                return reader, writer

            streams = []
            for start in range(0, count, 500):  # within the listen backlog
                streams += await asyncio.gather(
                    *(open_one() for _ in range(min(500, count - start)))
                )
            await asyncio.to_thread(until_waiting, url, count)
            pusher = HttpRemote(url, made["key"], timeout=30)
            assert (await asyncio.to_thread(pusher.push, [mutation(1)])).stored == 1
            pusher.close()
            answers = await asyncio.gather(*(reader.read() for reader, _ in streams))
            for _, writer in streams:
                writer.close()
            return answers

        answers = asyncio.run(run())
    assert len(answers) == count
    wrong = [a[:300] for a in answers if not (a.startswith(b"HTTP/1.1 200") and b'"m-1"' in a)]
    assert wrong == []


def test_processes_of_one_data_folder_wake_each_other_through_sockets(tmp_path: Path) -> None:
    """Unix datagram notifiers: a folder deeper than a socket path may be long works; a burst
    larger than the peer's queue still arrives (retried, then as one wake-everyone); a socket
    left by a dead process is removed."""
    folder = tmp_path / ("deep" * 30) / "server.db.notify"
    assert len(str(folder)) > 108

    async def run() -> None:
        one, two = UnixNotifier(folder), UnixNotifier(folder)
        await one.start()
        await two.start()
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        dead.bind(f"/proc/self/fd/{folder_fd}/1.dead")
        dead.close()  # its file stays, as a killed process's would
        os.close(folder_fd)
        try:
            for burst in (5, 300, 3000):
                events = [two.subscribe(f"ws-{burst}-{i}") for i in range(burst)]
                for i in range(burst):
                    one.notify(f"ws-{burst}-{i}")
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 10)
            assert not (folder / "1.dead").exists()
            quiet = one.subscribe("ws-quiet")
            two.notify("ws-other")
            await asyncio.sleep(0.2)
            assert not quiet.is_set()  # news of one workspace wakes no other
        finally:
            await one.stop()
            await two.stop()
        assert list(folder.iterdir()) == []

    asyncio.run(run())


@pytest.mark.parametrize("enough", [False, True], ids=["hard-limit-4096", "hard-limit-ours"])
def test_the_server_raises_its_open_files_limit_or_says_what_to_set(enough: bool) -> None:
    """The soft limit goes up to the hard one; below 16,384 the log says what to raise."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1] if enough else 4096
    if hard != resource.RLIM_INFINITY and hard < (16_384 if enough else 4096):
        pytest.fail(f"this test needs a hard limit on open files of 16,384 or more, not {hard}")
    script = (
        "import logging, resource; from cairn.server.app import raise_open_files; "
        "logging.basicConfig(); soft = raise_open_files(); "
        "print(soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
        check=True,
    )
    soft, applied = (int(n) for n in done.stdout.split())
    assert soft == applied == (16_384 if hard == resource.RLIM_INFINITY else hard)
    assert ("LimitNOFILE" in done.stderr) == (not enough), done.stderr


def status_code(url: str, token: str) -> int:
    answer = httpx.get(f"{url}/v1/sync/status", headers={"Authorization": f"Bearer {token}"})
    return answer.status_code


def until_refused(url: str, token: str) -> float:
    """Seconds until ``url`` refuses ``token`` (401), asking every 10 ms."""
    started = time.monotonic()
    while (code := status_code(url, token)) != 401:
        assert code == 200, code
        assert time.monotonic() - started < 30, "the revoked key was never refused"
        time.sleep(0.01)
    return time.monotonic() - started


def test_a_key_revoked_through_one_process_is_refused_by_the_others(env: dict[str, str]) -> None:  # noqa: F811
    """Two server processes (two hosts on PostgreSQL) that cache keys for an hour: a key
    revoked through one is refused by it at once and by the other once the notifier's news
    arrives; a key revoked by the CLI is refused by both the same way."""
    made = ok_json(env, "workspace", "create", "team")
    assert isinstance(made, dict)
    tokens = [
        ok_json(env, "key", "create", "-w", "team", "--name", f"k{n}", "--scope", "read")
        for n in range(2)
    ]
    assert all(isinstance(t, dict) for t in tokens)
    by_http, by_cli = (t["key"] for t in tokens)  # type: ignore[index]
    cache = ("--key-cache-ttl", "3600")
    with serving(env, *cache) as (one, _one), serving(env, *cache) as (two, _two):
        for url in (one, two):
            assert status_code(url, by_http) == status_code(url, by_cli) == 200
            cached = httpx.get(f"{url}/metrics").text
            assert re.search(r"^cairn_api_keys_cached [2-9]", cached, re.MULTILINE), cached
        key_id = by_http.split("_")[1]
        revoked = httpx.delete(
            f"{one}/v1/auth/keys/{key_id}", headers={"Authorization": f"Bearer {made['key']}"}
        )
        assert revoked.status_code == 200, revoked.text
        assert status_code(one, by_http) == 401  # where it was revoked: at once
        elsewhere = until_refused(two, by_http)
        print(f"\nrevoked over HTTP: refused by the other process after {elsewhere * 1000:.0f} ms")
        assert ok_json(env, "key", "revoke", by_cli.split("_")[1])
        for url in (one, two):
            print(f"revoked by the CLI: refused after {until_refused(url, by_cli) * 1000:.0f} ms")
        assert status_code(two, made["key"]) == 200  # the others stay cached and valid


def test_an_idle_long_poll_costs_the_database_nothing_yet_hears_news(
    small_server: tuple[str, str, ServerStorage],
) -> None:
    """Once the process has read the workspace's latest seq, long-polls at it (their key
    cached, their device's last pull batched) begin no transaction; a push still answers one."""
    url, token, storage = small_server
    remote = HttpRemote(url, token, device_id="dev-a")
    cursor = remote.pull(None).cursor  # learns the latest seq (and caches the key)
    time.sleep(1.5)  # the new device's first pull is written
    before = storage.transactions()
    for _ in range(3):
        assert remote.pull(cursor, wait=0.2).mutations == []
    assert storage.transactions() == before
    answer: list[Any] = []
    waiter = threading.Thread(target=long_poll, args=(remote, cursor, answer))
    waiter.start()
    until_waiting(url, 1)
    writer = HttpRemote(url, token)
    assert writer.push([mutation(1)]).stored == 1
    writer.close()
    waiter.join(timeout=WAIT + 10)
    assert [m.mutation_id for m in answer[0][0].mutations] == ["m-1"]
    remote.close()
