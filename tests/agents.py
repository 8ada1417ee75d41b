"""What the MCP tests share: calling a tool as an agent does and reading the ids it answers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

TIMEOUT = 60.0
"""Seconds: generous for a slow CI machine, bounded so a hung server fails instead of hanging."""


@asynccontextmanager
async def stdio_session(params: StdioServerParameters) -> AsyncIterator[ClientSession]:
    """An initialised client session with the MCP server ``params`` starts, as an agent's."""
    with anyio.fail_after(TIMEOUT):
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=TIMEOUT) as session:
                await session.initialize()
                yield session


async def call(session: ClientSession, tool: str, **arguments: Any) -> str:
    """A successful call's answer: one compact text block, said once (no structured copy)."""
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is None
    [block] = result.content
    assert block.type == "text" and "{" not in block.text.split("\n")[0]
    return block.text


_ID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def ids(text: str) -> list[str]:
    """The ids of the memories an answer lists, in order (the first id on each item's line)."""
    return re.findall(
        rf"^(?:\d+\. |remembered |already remembered \(tags merged\) )?({_ID}) ", text, flags=re.M
    )


def first_id(text: str) -> str:
    return ids(text)[0]


async def call_error(session: ClientSession, tool: str, **arguments: Any) -> str:
    """The message of a call that must fail as a tool error."""
    result = await session.call_tool(tool, arguments)
    assert result.is_error
    return " ".join(block.text for block in result.content if block.type == "text")
