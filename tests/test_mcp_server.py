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

from .agents import call, call_error, first_id, ids, stdio_session

CAIRN = Path(sys.executable).with_name("cairn")

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
    async with stdio_session(
        StdioServerParameters(command=str(CAIRN), args=["mcp"], env=env, cwd=cwd)
    ) as session:
        yield session


async def test_lists_the_tools_with_descriptions_and_schemas(
    cairn_env: dict[str, str], repo: Path
) -> None:
    async with connect(cairn_env, repo) as session:
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}

    assert set(tools) == {
        "remember",
        "recall",
        "get",
        "edit",
        "forget",
        "list_memories",
        "sync_status",
        "sync_now",
    }
    for tool in tools.values():
        assert tool.description and len(tool.description) > 100
        assert tool.input_schema["type"] == "object"
        assert all(p.get("description") for p in tool.input_schema["properties"].values())
        assert tool.output_schema is None  # answers are compact text, said once
    assert tools["remember"].input_schema["required"] == ["content"]
    assert tools["recall"].input_schema["required"] == ["query"]
    assert tools["forget"].input_schema["required"] == ["id"]
    assert tools["get"].input_schema["required"] == ["id"]
    assert tools["edit"].input_schema["required"] == ["id"]
    assert "'shop'" in (tools["remember"].description or "")


async def test_remember_recall_list_and_forget(cairn_env: dict[str, str], repo: Path) -> None:
    async with connect(cairn_env, repo) as session:
        deploy_text = await call(
            session,
            "remember",
            content="We deploy to production with blue-green releases behind the load balancer",
            kind="decision",
            tags=["Deploy"],
        )
        deploy = first_id(deploy_text)
        fixtures = first_id(
            await call(
                session,
                "remember",
                content="Prefer pytest fixtures over unittest setUp methods in this codebase",
                kind="preference",
            )
        )
        staging_text = await call(
            session,
            "remember",
            content="The staging database is wiped and reseeded every Sunday at 02:00 UTC",
            kind="fact",
            project="infra",
        )
        staging = first_id(staging_text)
        assert deploy_text.startswith(f"remembered {deploy} decision · shop · #deploy · ")
        assert staging_text.startswith(f"remembered {staging} fact · infra · ")

        found = await call(session, "recall", query="how do we ship a new version to prod?")
        assert first_id(found) == deploy
        first = found.split("\n\n")[0].splitlines()
        assert first[1].startswith("We deploy to production")
        assert first[2].startswith("why: semantic #1 (cosine ")

        question = "when is the staging database reset?"
        assert first_id(await call(session, "recall", query=question)) == staging
        in_infra = await call(session, "recall", query=question, project="infra")
        assert ids(in_infra) == [staging]
        in_shop = await call(session, "recall", query=question, project="shop")
        assert staging not in ids(in_shop)
        assert " · infra · " not in in_shop
        tagged = await call(session, "recall", query="releases", tags=["deploy"])
        assert ids(tagged) == [deploy]

        listed = await call(session, "list_memories")
        assert ids(listed) == [staging, fixtures, deploy]
        assert listed.endswith("3 of 3 shown")
        page = await call(session, "list_memories", project="shop", limit=1)
        assert ids(page) == [fixtures]
        assert page.endswith("1 of 2 shown; 1 more beyond the limit")
        prefs = await call(session, "list_memories", kinds=["preference"])
        assert ids(prefs) == [fixtures]

        assert await call(session, "forget", id=deploy) == f"forgot {deploy}"
        again = await call(session, "recall", query="how do we ship a new version to prod?")
        assert deploy not in ids(again)
        after = await call(session, "list_memories")
        assert deploy not in ids(after)
        assert after.endswith("2 of 2 shown")
        assert await call(session, "forget", id=deploy) == f"forgot {deploy}"  # idempotent
        unknown = await call_error(session, "get", id="0123456789abcdef")
        assert "list_memories" in unknown and "cairn list" not in unknown


async def test_get_and_edit_a_memory(cairn_env: dict[str, str], repo: Path) -> None:
    async with connect(cairn_env, repo) as session:
        made = first_id(
            await call(session, "remember", content="The cache TTL is 60 seconds", kind="fact")
        )
        edited = await call(
            session,
            "edit",
            id=made[:8],
            content="The cache TTL is 300 seconds since the March incident",
            kind="gotcha",
            add_tags=["cache"],
        )
        assert edited.startswith(f"edited {made} gotcha · shop · #cache · ")
        shown = await call(session, "get", id=made)
        assert shown.endswith("\n\nThe cache TTL is 300 seconds since the March incident")
        found = await call(session, "recall", query="how long do cached entries live?")
        assert first_id(found) == made and "300 seconds" in found
        assert "nothing to change" in await call_error(session, "edit", id=made)


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
        bad_limit = await call_error(session, "recall", query="ci", limit=0)
        assert bad_limit == "invalid_input: limit: Input should be greater than or equal to 1"
        not_a_number = await call_error(session, "list_memories", limit="many")
        assert not_a_number.startswith("invalid_input: limit: ")
        assert "pydantic" not in not_a_number and "\n" not in not_a_number

        listed = await call(session, "list_memories")
    assert listed == (
        f"{first_id(listed)} note · shop · "
        f"{listed.split(' · ')[2].splitlines()[0]}\n"
        "CI runs on GitHub Actions with a 20 minute cap\n\n1 of 1 shown"
    )


async def test_identical_content_is_stored_once(cairn_env: dict[str, str], repo: Path) -> None:
    text = "The payments service must never log card numbers"
    async with connect(cairn_env, repo) as session:
        first = await call(session, "remember", content=text, kind="gotcha")
        second = await call(session, "remember", content=text, kind="gotcha", tags=["pci"])
        listed = await call(session, "list_memories")

    assert first.startswith("remembered ")
    assert second.startswith("already remembered (tags merged) ")
    assert first_id(second) == first_id(first)
    assert " · #pci · " in second
    assert listed.endswith("1 of 1 shown")


async def test_topic_key_supersedes_the_older_memory(cairn_env: dict[str, str], repo: Path) -> None:
    async with connect(cairn_env, repo) as session:
        old = first_id(
            await call(
                session, "remember", content="We lint with flake8 and isort", topic_key="linter"
            )
        )
        new_text = await call(session, "remember", content="We lint with ruff", topic_key="linter")
        found = await call(session, "recall", query="which linter do we use?")
        shown = await call(session, "get", id=old)

    new = first_id(new_text)
    assert f"\nsupersedes {old} (same topic_key)" in new_text
    assert ids(found)[0] == new
    older = next(block for block in found.split("\n\n") if old in block.splitlines()[0])
    assert older.endswith(f"superseded by {new} (prefer the newer memory)")
    assert f"\nsuperseded by {new}\n" in shown


async def test_parallel_calls_all_succeed(cairn_env: dict[str, str], repo: Path) -> None:
    """Agents issue tool calls in parallel; the server must answer each one correctly."""
    results: list[str] = []

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
    assert listed.endswith("8 of 8 shown")
    assert len(ids(found)) == 8


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
