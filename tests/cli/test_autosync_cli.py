"""Autosync as processes run it: `cairn sync daemon`, `cairn mcp` and `cairn serve`, each a real
subprocess syncing through a real `cairn server run` process."""

from __future__ import annotations

import json
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from .conftest import CAIRN, Device, env_for, in_home, new_device, server_process

TTL = 3.0  # seconds a daemon's lease lasts in these tests (15 s by default)


def wait_for(check: Callable[[], object], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not true within {seconds} s"
        time.sleep(0.1)


class Daemon:
    """`cairn sync daemon --json` in the background; ``lines`` are the statuses it printed."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [CAIRN, "sync", "daemon", "--json", "--lease-ttl", str(TTL)],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(json.loads(line))

    def saw(self, **fields: object) -> bool:
        return any(all(line.get(k) == v for k, v in fields.items()) for line in list(self.lines))

    def pushed(self) -> bool:
        return any(line["message"].startswith("pushed") for line in list(self.lines))

    @property
    def owner(self) -> str:
        wait_for(lambda: self.lines)
        return str(self.lines[0]["owner"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(15)


@pytest.fixture
def daemons() -> Iterator[Callable[[dict[str, str], Path], Daemon]]:
    started: list[Daemon] = []

    def start(env: dict[str, str], cwd: Path) -> Daemon:
        started.append(Daemon(env, cwd))
        return started[-1]

    yield start
    for daemon in started:
        daemon.stop()


def meta(tmp_path: Path, name: str, key: str) -> Any:
    """A value from device ``name``'s store, read beside the running processes."""
    with sqlite3.connect(tmp_path / name / "cairn.db", timeout=10) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return json.loads(row[0]) if row else None


def pulled(device: Device, content: str) -> bool:
    """Pull once (waiting up to 5 s for changes) and say whether ``content`` is here now."""
    device("sync", "pull", "--wait", "5", "--json")
    listed = device("list", "--limit", "100", "--json")["memories"]
    return any(m["content"] == content for m in listed)


def test_two_daemons_on_one_store_sync_one_at_a_time_and_a_killed_one_hands_over(
    tmp_path: Path, server: tuple[str, str], daemons: Callable[[dict[str, str], Path], Daemon]
) -> None:
    laptop = new_device(tmp_path, "laptop", server)
    desktop = new_device(tmp_path, "desktop", server)
    env = env_for(tmp_path, "laptop")
    first = daemons(env, tmp_path)
    wait_for(lambda: first.saw(phase="healthy"))
    second = daemons(env, tmp_path)
    wait_for(lambda: second.saw(reason="other_worker"))

    laptop("remember", "The mobile app ships every second Tuesday", "--json")
    wait_for(lambda: pulled(desktop, "The mobile app ships every second Tuesday"))
    assert first.pushed() and not second.pushed()
    status = laptop("sync", "status", "--json")["worker"]
    assert status["owner"] == first.owner and status["worker_running"]

    # A manual sync while a daemon holds the lease asks that daemon for the round.
    report = laptop("sync", "now", "--json")
    assert set(report) == {"push", "pull", "push_after_pull"}
    assert meta(tmp_path, "laptop", "sync.round")["by"] == first.owner
    assert not second.pushed()

    first.process.send_signal(signal.SIGKILL)  # no clean exit: it never gives the lease back
    first.process.wait(10)
    killed = time.monotonic()
    laptop("remember", "Hotfixes skip the release train", "--json")
    wait_for(lambda: second.pushed(), 20)
    assert time.monotonic() - killed < TTL + 10  # expiry, a standby's retry, the debounce
    assert pulled(desktop, "Hotfixes skip the release train")
    status = laptop("sync", "status", "--json")["worker"]
    assert status["owner"] == second.owner and status["worker_running"]
    assert status["phase"] == "healthy" and status["pending"] == 0


def test_a_stopped_daemon_gives_the_lease_back_and_status_says_none_runs(
    tmp_path: Path, server: tuple[str, str], daemons: Callable[[dict[str, str], Path], Daemon]
) -> None:
    laptop = new_device(tmp_path, "laptop", server)
    daemon = daemons(env_for(tmp_path, "laptop"), tmp_path)
    wait_for(lambda: daemon.saw(phase="healthy"))
    assert laptop("sync", "status", "--json")["worker"]["worker_running"]
    daemon.stop()  # SIGTERM, as a service manager stops it
    assert daemon.process.returncode == 0
    assert meta(tmp_path, "laptop", "sync.lease") is None
    worker = laptop("sync", "status", "--json")["worker"]
    assert not worker["worker_running"] and worker["phase"] == "idle"
    report = laptop("sync", "now", "--json")  # no worker: the command syncs by itself
    assert meta(tmp_path, "laptop", "sync.round") is None  # no worker was asked
    assert set(report) == {"push", "pull", "push_after_pull"}


# --- the MCP server runs the worker and offers sync_status / sync_now --------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def mcp_session(env: dict[str, str], cwd: Path, *args: str) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=CAIRN, args=["mcp", *args], env=env, cwd=cwd)
    with anyio.fail_after(90):
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=60) as session:
                await session.initialize()
                yield session


async def tool(session: ClientSession, name: str, **arguments: Any) -> str:
    """The compact text a tool answers."""
    result = await session.call_tool(name, arguments)
    assert not result.is_error, result.content
    return " ".join(block.text for block in result.content if block.type == "text")


def fields(text: str) -> dict[str, str]:
    """sync_status's `key: value` lines."""
    return dict(line.split(": ", 1) for line in text.splitlines())


async def eventually(session: ClientSession, check: Callable[[dict[str, str]], bool]) -> Any:
    for _ in range(200):
        status = fields(await tool(session, "sync_status"))
        if check(status):
            return status
        await anyio.sleep(0.1)
    raise AssertionError(f"sync_status never satisfied the check: {status}")


@pytest.mark.anyio
async def test_the_mcp_server_syncs_in_the_background_and_offers_sync_tools(
    tmp_path: Path, server: tuple[str, str]
) -> None:
    new_device(tmp_path, "laptop", server)
    desktop = new_device(tmp_path, "desktop", server)
    desktop("remember", "Staging certificates renew on the first of the month", "--json")
    desktop("sync", "push", "--json")
    async with mcp_session(env_for(tmp_path, "laptop"), tmp_path) as session:
        status = await eventually(session, lambda s: s["background worker"] == "running")
        assert status["remote"] == server[0]
        # Remote changes arrive without a sync call ...
        for _ in range(100):
            found = await tool(session, "recall", query="when do staging certificates renew?")
            if found != "no memory matched":
                break
            await anyio.sleep(0.2)
        assert found.splitlines()[1].startswith("Staging certificates renew")
        # ... and local ones leave without one.
        await tool(session, "remember", content="The status page is hosted on a separate cloud")
        await anyio.to_thread.run_sync(
            lambda: wait_for(
                lambda: pulled(desktop, "The status page is hosted on a separate cloud")
            )
        )
        status = await eventually(
            session, lambda s: s["phase"] == "healthy" and s["pending"] == "0"
        )
        assert status["dead letters"] == "0" and status["last success"]
        now = await tool(session, "sync_now")
        assert now == "pushed 0, received 0, applied 0, refused or unreadable 0"
    assert meta(tmp_path, "laptop", "sync.lease") is None  # the worker stopped with the server


@pytest.mark.anyio
async def test_mcp_sync_tools_before_setup_and_with_autosync_off(
    tmp_path: Path, server: tuple[str, str]
) -> None:
    async with mcp_session(env_for(tmp_path, "fresh"), tmp_path) as session:
        status = await eventually(session, lambda s: s["phase"] == "disabled")
        assert status["remote"].startswith("none") and status["reason"] == "sync_not_configured"
        assert "cairn sync setup" in status["message"]
        result = await session.call_tool("sync_now", {})
        assert result.is_error
        assert "sync_not_configured" in " ".join(
            block.text for block in result.content if block.type == "text"
        )

    laptop = new_device(tmp_path, "laptop", server)
    laptop("remember", "Only the on-call engineer may restart the broker", "--json")
    async with mcp_session(env_for(tmp_path, "laptop"), tmp_path, "--no-autosync") as session:
        await anyio.sleep(1.0)
        status = fields(await tool(session, "sync_status"))
        assert status["background worker"] == "not running" and status["pending"] == "1"
        now = await tool(session, "sync_now")  # no worker: this process syncs by itself
        assert now.startswith("pushed 1, ")
        assert fields(await tool(session, "sync_status"))["pending"] == "0"


# --- the local API -------------------------------------------------------------------------------


@contextmanager
def local_api(env: dict[str, str], cwd: Path) -> Iterator[httpx.Client]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [CAIRN, "serve", "--port", str(port)],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:

            def up() -> bool:
                assert process.poll() is None, "cairn serve exited"
                try:
                    return client.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(up, 60)
            yield client
    finally:
        process.terminate()
        process.wait(15)
    assert process.returncode == 0  # SIGTERM is a clean stop


def test_the_local_api_reports_sync_and_syncs_now(tmp_path: Path) -> None:
    with server_process(tmp_path, "e2e") as (url, key, _):
        new_device(tmp_path, "laptop", (url, key))
        with local_api(env_for(tmp_path, "laptop"), tmp_path) as api:

            def healthy() -> bool:
                worker = api.get("/v1/sync/status").json()["worker"]
                return bool(worker["worker_running"] and worker["phase"] == "healthy")

            wait_for(healthy)
            created = api.post("/v1/memories", json={"content": "Backups are kept for 35 days"})
            assert created.status_code == 201
            now = api.post("/v1/sync/now")
            assert now.status_code == 200
            assert set(now.json()) == {"push", "pull", "push_after_pull"}
            wait_for(lambda: api.get("/v1/sync/status").json()["pending"] == 0)
        assert meta(tmp_path, "laptop", "sync.lease") is None  # given back on the way out
    # The sync server is gone now: the round fails with the remote's reason, as a 502.
    with local_api(env_for(tmp_path, "laptop"), tmp_path) as api:
        api.post("/v1/memories", json={"content": "Written while the sync server is down"})
        failed = api.post("/v1/sync/now")
        assert failed.status_code == 502
        assert failed.json()["error"]["code"] == "unreachable"
        status = api.get("/v1/sync/status").json()
        assert status["pending"] == 1 and status["configured"]
    assert in_home(tmp_path, "laptop")("list", "--json")["total"] == 2  # nothing lost locally


def test_the_local_api_without_sync_set_up_says_so(tmp_path: Path) -> None:
    with local_api(env_for(tmp_path, "fresh"), tmp_path) as api:
        status = api.get("/v1/sync/status")
        assert status.status_code == 200
        assert status.json()["configured"] is False
        assert status.json()["worker"]["phase"] == "disabled"
        refused = api.post("/v1/sync/now")
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "sync_not_configured"


def test_cairn_serve_stopped_right_after_a_write_pushes_it_on_the_way_out(tmp_path: Path) -> None:
    """SIGTERM a moment after a write (before the push's debounce is over): the worker pushes
    the outbox before the process exits, so nothing is left pending on the remote's account."""
    folder = tmp_path / "shared"
    folder.mkdir()
    laptop = in_home(tmp_path, "laptop")
    laptop("sync", "setup", "--remote", folder.as_uri(), "--name", "laptop")
    with local_api(env_for(tmp_path, "laptop"), tmp_path) as api:
        created = api.post("/v1/memories", json={"content": "Invoices are archived after 7 years"})
        assert created.status_code == 201
    status = laptop("sync", "status", "--json")
    assert status["pending"] == 0
    assert status["remote_status"]["mutations"] == 1


def test_the_daemon_stamps_each_line_with_the_time(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [CAIRN, "sync", "daemon"],
        env=env_for(tmp_path, "fresh"),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(60, process.kill)  # a daemon that prints nothing fails the test
    watchdog.start()
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
    finally:
        watchdog.cancel()
        process.terminate()
        process.wait(15)
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d "
    assert re.match(stamp + r"(idle|disabled)", line), line


def test_the_local_api_sets_up_sync_with_the_library_function_the_cli_uses(tmp_path: Path) -> None:
    """POST /v1/sync/setup makes the workspace; a device set up from the CLI joins it."""
    folder = tmp_path / "shared"
    env = env_for(tmp_path, "laptop")
    env.pop("CAIRN_PASSPHRASE")  # the API takes it in the body
    with local_api(env, tmp_path) as api:
        missing = api.post(
            "/v1/sync/setup", json={"remote": folder.as_uri(), "passphrase": "team secret 1"}
        )
        assert missing.status_code == 422, missing.text
        assert "does not exist" in missing.json()["error"]["message"]
        assert api.get("/v1/sync/status").json()["configured"] is False  # nothing changed
        assert not folder.exists()
        short = api.post(
            "/v1/sync/setup", json={"remote": str(folder), "passphrase": "short", "create": True}
        )
        assert short.status_code == 422, short.text
        done = api.post(
            "/v1/sync/setup",
            json={
                "remote": str(folder),
                "passphrase": "a passphrase the whole team knows",
                "create": True,
                "name": "laptop",
            },
        )
        assert done.status_code == 200, done.text
        made = done.json()
        assert made["created_keyring"] and made["recovery_key"] and made["device_name"] == "laptop"
        assert made["remote"] == folder.as_uri()
        assert api.post("/v1/memories", json={"content": "Set up over the local API"}).is_success
        assert api.post("/v1/sync/now").status_code == 200
        assert api.get("/v1/sync/status").json()["configured"] is True
    desk = in_home(tmp_path, "desk")
    desk("sync", "setup", "--remote", folder.as_uri(), "--name", "desk")
    desk("sync", "now")
    listed = desk("list", "--json")
    assert [m["content"] for m in listed["memories"]] == ["Set up over the local API"]
