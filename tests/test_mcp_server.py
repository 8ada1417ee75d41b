"""The MCP server as an agent meets it: `cairn mcp` spawned over stdio, driven by the SDK client."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

CAIRN = Path(sys.executable).with_name("cairn")
TIMEOUT = 60.0
"""Seconds: generous for a slow CI machine, bounded so a hung server fails instead of hanging."""

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository named `shop`: the agent's working folder, so the default project."""
    path = tmp_path / "shop"
    (path / ".git").mkdir(parents=True)
    return path


@asynccontextmanager
async def connect(env: dict[str, str], cwd: Path) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=str(CAIRN), args=["mcp"], env=env, cwd=cwd)
    with anyio.fail_after(TIMEOUT):
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=TIMEOUT) as session:
                await session.initialize()
                yield session


async def call(session: ClientSession, tool: str, **arguments: Any) -> Any:
    """A successful call's result; the text an agent reads carries the same data."""
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert [json.loads(block.text) for block in result.content if block.type == "text"] == [
        result.structured_content
    ]
    return result.structured_content


async def call_error(session: ClientSession, tool: str, **arguments: Any) -> str:
    """The message of a call that must fail as a tool error."""
    result = await session.call_tool(tool, arguments)
    assert result.is_error
    return " ".join(block.text for block in result.content if block.type == "text")


async def test_lists_the_tools_with_descriptions_and_schemas(
    cairn_env: dict[str, str], repo: Path
) -> None:
    async with connect(cairn_env, repo) as session:
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}

    assert set(tools) == {
        "remember",
        "recall",
        "forget",
        "list_memories",
        "sync_status",
        "sync_now",
    }
    for tool in tools.values():
        assert tool.description and len(tool.description) > 100
        assert tool.input_schema["type"] == "object"
        assert all(p.get("description") for p in tool.input_schema["properties"].values())
    assert tools["remember"].input_schema["required"] == ["content"]
    assert tools["recall"].input_schema["required"] == ["query"]
    assert tools["forget"].input_schema["required"] == ["id"]
    assert "'shop'" in (tools["remember"].description or "")


async def test_remember_recall_list_and_forget(cairn_env: dict[str, str], repo: Path) -> None:
    async with connect(cairn_env, repo) as session:
        deploy = await call(
            session,
            "remember",
            content="We deploy to production with blue-green releases behind the load balancer",
            kind="decision",
            tags=["Deploy"],
        )
        fixtures = await call(
            session,
            "remember",
            content="Prefer pytest fixtures over unittest setUp methods in this codebase",
            kind="preference",
        )
        staging = await call(
            session,
            "remember",
            content="The staging database is wiped and reseeded every Sunday at 02:00 UTC",
            kind="fact",
            project="infra",
        )
        assert deploy["created"] and deploy["project"] == "shop" and deploy["tags"] == ["deploy"]
        assert staging["project"] == "infra"

        found = await call(session, "recall", query="how do we ship a new version to prod?")
        top = found["results"][0]
        assert top["id"] == deploy["id"]
        assert top["content"].startswith("We deploy to production")
        assert top["why"].startswith("semantic #1")

        question = "when is the staging database reset?"
        everywhere = await call(session, "recall", query=question)
        assert everywhere["results"][0]["id"] == staging["id"]
        in_infra = await call(session, "recall", query=question, project="infra")
        assert [hit["id"] for hit in in_infra["results"]] == [staging["id"]]
        in_shop = await call(session, "recall", query=question, project="shop")
        assert staging["id"] not in {hit["id"] for hit in in_shop["results"]}
        assert {hit["project"] for hit in in_shop["results"]} <= {"shop"}
        tagged = await call(session, "recall", query="releases", tags=["deploy"])
        assert [hit["id"] for hit in tagged["results"]] == [deploy["id"]]

        listed = await call(session, "list_memories")
        assert [m["id"] for m in listed["memories"]] == [
            staging["id"],
            fixtures["id"],
            deploy["id"],
        ]
        assert listed["total"] == 3
        first = await call(session, "list_memories", project="shop", limit=1)
        assert [m["id"] for m in first["memories"]] == [fixtures["id"]]
        assert first["total"] == 2
        prefs = await call(session, "list_memories", kinds=["preference"])
        assert [m["id"] for m in prefs["memories"]] == [fixtures["id"]]

        assert await call(session, "forget", id=deploy["id"]) == {
            "id": deploy["id"],
            "forgotten": True,
        }
        again = await call(session, "recall", query="how do we ship a new version to prod?")
        assert deploy["id"] not in {hit["id"] for hit in again["results"]}
        after = await call(session, "list_memories")
        assert deploy["id"] not in {m["id"] for m in after["memories"]}
        assert after["total"] == 2
        again = await call(session, "forget", id=deploy["id"])  # forgetting is idempotent
        assert again == {"id": deploy["id"], "forgotten": True}


async def test_bad_input_is_a_tool_error_and_writes_nothing(
    cairn_env: dict[str, str], repo: Path
) -> None:
    async with connect(cairn_env, repo) as session:
        await call(session, "remember", content="CI runs on GitHub Actions with a 20 minute cap")

        empty = await call_error(session, "remember", content="   ")
        assert "content_empty" in empty and "the memory is empty" in empty
        bad_tag = await call_error(session, "remember", content="Tags matter", tags=["two words"])
        assert "invalid_input" in bad_tag and "two words" in bad_tag
        assert "query is empty" in await call_error(session, "recall", query=" ")
        assert "limit" in await call_error(session, "recall", query="ci", limit=0)

        listed = await call(session, "list_memories")
    assert [m["content"] for m in listed["memories"]] == [
        "CI runs on GitHub Actions with a 20 minute cap"
    ]


async def test_identical_content_is_stored_once(cairn_env: dict[str, str], repo: Path) -> None:
    text = "The payments service must never log card numbers"
    async with connect(cairn_env, repo) as session:
        first = await call(session, "remember", content=text, kind="gotcha")
        second = await call(session, "remember", content=text, kind="gotcha", tags=["pci"])
        listed = await call(session, "list_memories")

    assert first["created"] is True
    assert second["created"] is False
    assert second["id"] == first["id"]
    assert second["tags"] == ["pci"]
    assert listed["total"] == 1


async def test_topic_key_supersedes_the_older_memory(cairn_env: dict[str, str], repo: Path) -> None:
    async with connect(cairn_env, repo) as session:
        old = await call(
            session, "remember", content="We lint with flake8 and isort", topic_key="linter"
        )
        new = await call(session, "remember", content="We lint with ruff", topic_key="linter")
        found = await call(session, "recall", query="which linter do we use?")

    assert new["supersedes"] == old["id"]
    ranked = {hit["id"]: hit for hit in found["results"]}
    assert [hit["id"] for hit in found["results"]][0] == new["id"]
    assert ranked[old["id"]]["superseded_by"] == new["id"]


async def test_parallel_calls_all_succeed(cairn_env: dict[str, str], repo: Path) -> None:
    """Agents issue tool calls in parallel; the server must answer each one correctly."""
    results: list[Any] = []

    async def remember(n: int) -> None:
        results.append(await call(session, "remember", content=f"Service number {n} runs on k8s"))

    async def recall() -> None:
        results.append(await call(session, "recall", query="which services run on k8s?"))

    async with connect(cairn_env, repo) as session:
        async with anyio.create_task_group() as group:
            for n in range(8):
                group.start_soon(remember, n)
                group.start_soon(recall)
        listed = await call(session, "list_memories")
        found = await call(session, "recall", query="which services run on k8s?", limit=20)

    assert len(results) == 16
    assert listed["total"] == 8
    assert len(found["results"]) == 8


def cairn(env: dict[str, str], *args: str) -> Any:
    done = subprocess.run(
        [str(CAIRN), *args, "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def test_a_one_call_session_pushes_what_it_remembered_before_the_server_exits(
    cairn_env: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    """An MCP client that makes one call and closes the server (stdin closed) leaves nothing
    pending: the sync worker pushes the outbox on its way out, and another device gets it."""
    folder = tmp_path / "team-folder"
    folder.mkdir()
    env = {**cairn_env, "CAIRN_PASSPHRASE": "a passphrase the whole team knows"}
    cairn(env, "sync", "setup", "--remote", folder.as_uri(), "--name", "laptop")
    async with connect(env, repo) as session:
        await call(session, "remember", content="Release trains leave on Thursdays")

    assert cairn(env, "sync", "status")["pending"] == 0
    other = {**env, "CAIRN_HOME": str(tmp_path / "desktop")}
    cairn(other, "sync", "setup", "--remote", folder.as_uri(), "--name", "desktop")
    assert cairn(other, "sync", "pull")["pull"]["applied"] == 1
    listed = cairn(other, "list")["memories"]
    assert [m["content"] for m in listed] == ["Release trains leave on Thursdays"]
