"""The sync server's /mcp as a cloud agent meets it: the SDK's streamable HTTP client with an API
key, on each storage backend; tools by scope, every tool, and refusal in end-to-end workspaces."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from cairn.server import keys
from cairn.server.context import now_ms

from ..agents import TIMEOUT, call, call_error, first_id, ids

SyncServer = Any  # the tests/conftest.py fixture's type (conftest modules are not importable)

pytestmark = pytest.mark.anyio

MEMORY_TOOLS = {"remember", "recall", "get", "edit", "forget", "list_memories"}
READ_TOOLS = {"recall", "get", "list_memories", "workspace_status"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def connect(url: str, key: str) -> AsyncIterator[ClientSession]:
    client = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    with anyio.fail_after(TIMEOUT):
        async with client, streamable_http_client(f"{url}/mcp", http_client=client) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write, read_timeout_seconds=TIMEOUT) as session:
                await session.initialize()
                yield session


@pytest.fixture
def hosted(sync_server: SyncServer) -> tuple[SyncServer, str]:
    """The server and the admin key of a hosted workspace on it."""
    _, admin = keys.create_workspace(sync_server.storage, "hosted", now_ms(), "hosted")
    return sync_server, admin


def key_in(server: SyncServer, admin: str, scope: str) -> str:
    workspace_id = keys.check(server.storage, f"Bearer {admin}").workspace_id
    return server.new_key((scope,), workspace_id)


async def test_a_write_key_gets_every_tool_and_a_read_key_only_those_that_read(
    hosted: tuple[SyncServer, str],
) -> None:
    server, admin = hosted
    async with connect(server.url, key_in(server, admin, "write")) as session:
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
    assert set(tools) == MEMORY_TOOLS | {"workspace_status"}
    for tool in tools.values():
        assert tool.description and len(tool.description) > 100
        assert all(p.get("description") for p in tool.input_schema["properties"].values())
        assert "ctx" not in tool.input_schema["properties"]
    async with connect(server.url, key_in(server, admin, "read")) as session:
        names = {tool.name for tool in (await session.list_tools()).tools}
        refused = await call_error(session, "remember", content="a reader may not write this")
    assert names == READ_TOOLS
    assert "remember" in refused


async def test_every_tool_over_a_hosted_workspace(hosted: tuple[SyncServer, str]) -> None:
    server, admin = hosted
    async with connect(server.url, key_in(server, admin, "write")) as session:
        said = await call(
            session,
            "remember",
            content="The billing service retries webhooks with exponential backoff",
            kind="fact",
            project="billing",
            tags=["webhooks"],
        )
        memory = first_id(said)
        await call(session, "remember", content="Deploys go out on Tuesdays", kind="decision")
        found = await call(session, "recall", query="how are webhooks retried?", limit=2)
        assert ids(found)[0] == memory and "semantic #1" in found
        shown = await call(session, "get", id=memory[:-4])  # a unique prefix is enough
        assert "exponential backoff" in shown and "#webhooks" in shown
        edited = await call(session, "edit", id=memory, kind="gotcha", add_tags=["billing"])
        assert edited.startswith(f"edited {memory}") and "gotcha" in edited
        listed = await call(session, "list_memories", project="billing")
        assert ids(listed) == [memory] and "1 of 1" in listed
        status = await call(session, "workspace_status")
        assert "hosted" in status and "memories: 2" in status
        assert await call(session, "forget", id=memory) == f"forgot {memory}"
        gone = await call_error(session, "get", id=memory)
        assert "not_found" in gone and "forgotten" in gone
    # What the agent did is in the workspace: the REST routes see the same memories.
    answer = httpx.get(
        f"{server.url}/v1/memories", headers={"Authorization": f"Bearer {admin}"}, timeout=30
    )
    assert [m["content"] for m in answer.json()["memories"]] == ["Deploys go out on Tuesdays"]


async def test_a_topic_key_supersedes_and_get_shows_the_chain(
    hosted: tuple[SyncServer, str],
) -> None:
    server, admin = hosted
    async with connect(server.url, key_in(server, admin, "write")) as session:
        old = first_id(
            await call(session, "remember", content="CI runs on Jenkins", topic_key="ci")
        )
        said = await call(session, "remember", content="CI runs on GitHub Actions", topic_key="ci")
        new = first_id(said)
        assert old in said  # says what it superseded
        assert f"superseded by {new}" in await call(session, "get", id=old)


async def test_bad_input_is_a_tool_error_and_writes_nothing(
    hosted: tuple[SyncServer, str],
) -> None:
    server, admin = hosted
    async with connect(server.url, key_in(server, admin, "write")) as session:
        problem = await call_error(session, "recall", query="x", limit=0)
        assert problem.startswith("invalid_input:") and "limit" in problem
        assert "content_empty:" in await call_error(session, "remember", content="   ")
        assert await call(session, "list_memories") == "no memory matched"


async def test_an_end_to_end_workspace_says_the_server_cannot_read_it(
    sync_server: SyncServer,
) -> None:
    key = sync_server.new_key(("write",))  # the fixture's workspace is end-to-end
    async with connect(sync_server.url, key) as session:
        refused = await call_error(session, "recall", query="anything")
        status = await call(session, "workspace_status")
    assert "not_hosted:" in refused
    assert "cannot read" in refused and "cairn mcp" in refused
    assert "end-to-end" in status and "unknown to the server" in status


async def test_no_key_or_a_wrong_key_is_refused_before_any_mcp_work(
    sync_server: SyncServer,
) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for headers in ({}, {"Authorization": "Bearer cairn_nope_nope"}):
        answer = httpx.post(f"{sync_server.url}/mcp", json=body, headers=headers, timeout=30)
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "auth_failed"
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
