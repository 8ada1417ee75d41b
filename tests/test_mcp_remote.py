"""`cairn mcp --remote` as an agent meets it: spawned over stdio by the SDK's client, serving a
hosted workspace of a real sync server with no local store, model or home of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession, StdioServerParameters

from cairn.cli.launch import thin_mcp
from cairn.server import keys
from cairn.server.context import now_ms

from .agents import TIMEOUT, call, call_error, first_id, ids, stdio_session

CAIRN = Path(sys.executable).with_name("cairn")
SyncServer = Any  # the tests/conftest.py fixture's type (conftest modules are not importable)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def hosted_key(sync_server: SyncServer) -> tuple[SyncServer, str]:
    """The server and a write key of a hosted workspace on it."""
    workspace, _ = keys.create_workspace(sync_server.storage, "agents", now_ms(), "hosted")
    return sync_server, sync_server.new_key(("write",), workspace.id)


def env_for(tmp_path: Path, key: str) -> dict[str, str]:
    # A home that does not exist: the thin server must never create a store there.
    return {"CAIRN_HOME": str(tmp_path / "no-home"), "CAIRN_API_KEY": key, "PATH": ""}


@asynccontextmanager
async def connect(url: str, env: dict[str, str]) -> AsyncIterator[ClientSession]:
    async with stdio_session(
        StdioServerParameters(command=str(CAIRN), args=["mcp", "--remote", url], env=env)
    ) as session:
        yield session


async def test_serves_the_hosted_workspace_with_no_local_store(
    hosted_key: tuple[SyncServer, str], tmp_path: Path
) -> None:
    server, key = hosted_key
    async with connect(server.url, env_for(tmp_path, key)) as session:
        names = {tool.name for tool in (await session.list_tools()).tools}
        said = await call(session, "remember", content="Staging resets every night at 02:00 UTC")
        memory = first_id(said)
        found = await call(session, "recall", query="when is staging reset?")
        assert ids(found)[0] == memory
        assert "Staging resets" in await call(session, "get", id=memory)
        refused = await call_error(session, "get", id="nope")
        assert "not_found" in refused
    assert names == {
        "remember",
        "recall",
        "get",
        "edit",
        "forget",
        "list_memories",
        "workspace_status",
    }
    assert not (tmp_path / "no-home").exists()
    # It is the server's workspace: what the agent remembered is there.
    assert server.storage.index_lag(keys.check(server.storage, f"Bearer {key}").workspace_id)[1]


async def test_a_read_key_gets_the_tools_that_read(sync_server: SyncServer, tmp_path: Path) -> None:
    workspace, _ = keys.create_workspace(sync_server.storage, "agents", now_ms(), "hosted")
    key = sync_server.new_key(("read",), workspace.id)
    async with connect(sync_server.url, env_for(tmp_path, key)) as session:
        names = {tool.name for tool in (await session.list_tools()).tools}
    assert names == {"recall", "get", "list_memories", "workspace_status"}


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    },
}


def test_a_refused_start_is_an_error_for_the_client_and_a_message(
    sync_server: SyncServer, tmp_path: Path
) -> None:
    for url, key, said in (
        (sync_server.url, "cairn_nope_nope", "auth_failed: "),
        ("http://127.0.0.1:9", "cairn_nope_nope", "unreachable: cannot reach the sync server"),
        ("ftp://example.com", "cairn_nope_nope", "must be the sync server's http:// or https://"),
        (sync_server.url, "", "an API key is needed"),
    ):
        done = subprocess.run(
            [str(CAIRN), "mcp", "--remote", url],
            env=env_for(tmp_path, key),
            input=json.dumps(INITIALIZE) + "\n",
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert done.returncode == 1, done.stderr
        assert said in done.stderr
        assert "Traceback" not in done.stderr
        if done.stdout:  # the client's initialize got an error, not silence
            answer = json.loads(done.stdout)
            assert answer["id"] == 1 and said in answer["error"]["message"]


def test_lines_that_are_not_json_get_a_parse_error_and_the_relay_goes_on(
    hosted_key: tuple[SyncServer, str], tmp_path: Path
) -> None:
    server, key = hosted_key
    ping = {"jsonrpc": "2.0", "id": 7, "method": "ping"}
    done = subprocess.run(
        [str(CAIRN), "mcp", "--remote", server.url],
        env=env_for(tmp_path, key),
        input="not json\n" + json.dumps(INITIALIZE) + "\n" + json.dumps(ping) + "\n",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    answers = {a["id"]: a for a in map(json.loads, done.stdout.splitlines())}
    assert answers[None]["error"]["code"] == -32700
    assert answers[1]["result"]["serverInfo"]["name"] == "cairn"
    assert answers[7]["result"] == {}


def test_the_thin_relay_starts_without_the_full_command_line_only_in_its_own_form() -> None:
    assert thin_mcp(["mcp", "--remote", "https://s", "--api-key", "k"]) == ("https://s", "k")
    assert thin_mcp(["mcp", "--remote=https://s"]) == ("https://s", "")
    for other in (
        ["mcp"],
        ["mcp", "--remote", "https://s", "--help"],
        ["mcp", "--no-autosync", "--remote", "https://s"],
        ["mcp", "--rem", "https://s"],
        ["mcp", "--remote"],
        ["recall", "--remote", "https://s"],
        [],
    ):
        assert thin_mcp(other) is None, other


def test_the_full_command_line_takes_the_same_options(sync_server: SyncServer) -> None:
    shown = subprocess.run(
        [str(CAIRN), "mcp", "--help"], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert "--remote" in shown.stdout and "--api-key" in shown.stdout
    done = subprocess.run(  # not the thin form (--no-autosync too): the full CLI relays it
        [str(CAIRN), "mcp", "--no-autosync", "--remote", sync_server.url, "--api-key", "x"],
        input=json.dumps(INITIALIZE) + "\n",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 1 and "auth_failed" in done.stderr
