"""The sync server's ``/mcp``: the memory tools over streamable HTTP, for hosted workspaces.

A cloud agent attaches the server as a remote MCP server with an API key as its bearer token.
The key chooses everything: its workspace, and its tools (a read key gets no tool that writes).
The tools are the local ``cairn mcp``'s (``cairn.agent_tools``), over ``cairn.server.hosted``;
in an end-to-end workspace each answers that the server cannot read it, and how to run a
device instead. Sessions are stateless, so any worker of any host answers any request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from mcp.server.mcpserver import Context
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ToolAnnotations
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from cairn import agent_text, model
from cairn.agent_tools import CairnMCPServer, add_memory_tools, new_server, tool_errors
from cairn.errors import NotHosted
from cairn.memory_rules import NewMemory
from cairn.model import Filters, Hit, Memory, Relation, RememberResult
from cairn.protocol import HOSTED
from cairn.server import keys
from cairn.server.context import ServerContext, now_ms
from cairn.server.routes.common import Reader
from cairn.server.storage import ApiKey

PATH = "/mcp"
_KEY = "cairn.key"  # where the route leaves the caller's key in the ASGI scope for the tools

INSTRUCTIONS = """\
Cairn is your long-term memory across sessions, shared with the user's other agents through a
hosted workspace. Call `recall` at the start of a task and whenever you are unsure about a
decision, convention, preference or past problem. Call `remember` when you learn something
worth keeping after this conversation ends: one self-contained idea per memory, never secrets."""


class HostedVerbs:
    """The memory verbs over one hosted workspace, as one API key may use them."""

    project = model.DEFAULT_PROJECT

    def __init__(self, ctx: ServerContext, key: ApiKey) -> None:
        workspace = ctx.storage.workspace_by_id(key.workspace_id)
        if workspace.mode != HOSTED:
            raise NotHosted(
                f"workspace {workspace.name!r} is end-to-end encrypted: this server holds its "
                "memories sealed and cannot read them, so it cannot recall or remember for you. "
                "Run Cairn where the agent runs instead: `pip install cairn-memory`, then "
                "`cairn sync setup <this server's URL> --api-key <key>` with the workspace's "
                "passphrase, and attach `cairn mcp` (a local MCP server over stdio)."
            )
        self.ctx, self.key, self.hosted = ctx, key, ctx.hosted

    def remember(
        self,
        content: str,
        kind: str = model.DEFAULT_KIND,
        project: str | None = None,
        tags: Sequence[str] = (),
        topic_key: str | None = None,
    ) -> RememberResult:
        item = NewMemory(content, kind, project or self.project, tags, topic_key)
        result = self.hosted.remember(self.key.workspace_id, self.key.id, item, now_ms())
        if result.created:
            self.ctx.notifier.notify(self.key.workspace_id)
        return result

    def recall(self, query: str, filters: Filters | None = None, limit: int = 10) -> list[Hit]:
        workspace, key = self.key.workspace_id, self.key.id
        return self.hosted.recall(workspace, key, query, filters or Filters(), limit, now_ms())

    def get(self, memory_id: str) -> Memory:
        return self.hosted.get(self.key.workspace_id, memory_id)

    def relations(self, memory_id: str) -> Sequence[Relation]:
        return self.hosted.relations(self.key.workspace_id, memory_id)

    def edit(
        self,
        memory_id: str,
        *,
        content: str | None = None,
        kind: str | None = None,
        tags: Sequence[str] = (),
    ) -> Memory:
        workspace, key = self.key.workspace_id, self.key.id
        memory = self.hosted.edit(workspace, key, memory_id, (content, kind, tags), now_ms())
        self.ctx.notifier.notify(workspace)
        return memory

    def forget(self, memory_id: str) -> Memory:
        workspace = self.key.workspace_id
        memory = self.hosted.forget(workspace, self.key.id, memory_id, now_ms())
        self.ctx.notifier.notify(workspace)
        return memory

    def list(self, filters: Filters | None = None, limit: int = 20) -> list[Memory]:
        return self.hosted.list(self.key.workspace_id, filters or Filters(), limit, 0)[0]

    def count(self, filters: Filters | None = None) -> int:
        return self.hosted.list(self.key.workspace_id, filters or Filters(), 1, 0)[1]


def _caller(ctx: Context[Any, Any]) -> ApiKey:
    request = ctx.request_context.request
    assert isinstance(request, Request)  # the streamable HTTP transport passes the request
    key: ApiKey = request.scope[_KEY]
    return key


def _tools(context: ServerContext, writable: bool) -> CairnMCPServer:
    """The MCP server one kind of key sees: with or without the tools that write."""
    server = new_server(INSTRUCTIONS)
    add_memory_tools(
        server, lambda ctx: HostedVerbs(context, _caller(ctx)), model.DEFAULT_PROJECT, writable
    )

    @server.tool(
        description=(
            "This workspace on the Cairn server: its name, whether the server can read it "
            "(hosted) or holds it sealed (end-to-end), how many memories it holds, its log's "
            "length and how far the search index has read it, its devices, and what your key "
            "may do. Call it when the user asks about the shared memory or a tool refuses."
        ),
        annotations=ToolAnnotations(read_only_hint=True),
        structured_output=False,
    )
    def workspace_status(ctx: Context | None = None) -> str:
        assert ctx is not None
        key = _caller(ctx)
        with tool_errors():
            workspace = context.storage.workspace_by_id(key.workspace_id)
            position, latest = context.storage.index_lag(key.workspace_id)
            hosted = workspace.mode == HOSTED
            memories = context.hosted.list(key.workspace_id, Filters(), 1, 0)[1] if hosted else None
            devices = context.storage.devices(key.workspace_id)
        return agent_text.fields(
            {
                "workspace": workspace.name,
                "mode": "hosted (the server reads and searches it)"
                if hosted
                else "end-to-end (sealed: the server cannot read it; use a device)",
                "memories": memories if memories is not None else "unknown to the server",
                "log": f"{latest} mutations",
                "index": f"read up to {position}" if hosted else "none",
                "devices": len(devices),
                "key scopes": ", ".join(key.scopes),
            }
        )

    return server


class McpEndpoint:
    """``/mcp`` of one server process: two MCP servers (for read keys and for the others),
    their session managers running from the app's startup to its shutdown."""

    def __init__(self, context: ServerContext) -> None:
        self.servers = {w: _tools(context, w) for w in (False, True)}
        for server in self.servers.values():
            # Builds the session manager; its Starlette app is not used. No DNS-rebinding check:
            # the caller authenticates with a bearer key, which a browser never sends by itself.
            server.streamable_http_app(
                streamable_http_path=PATH,
                stateless_http=True,
                json_response=True,
                transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            )

    async def run(self) -> None:
        """Runs both session managers until cancelled (the app's shutdown)."""
        readers, writers = (s.session_manager for s in self.servers.values())
        async with readers.run(), writers.run():
            await asyncio.Event().wait()

    def router(self) -> APIRouter:
        """The route: the caller's key is checked like every route's, then the MCP server
        of its scope answers."""
        router = APIRouter()
        endpoint = self

        @router.api_route(PATH, methods=["GET", "POST", "DELETE"], include_in_schema=False)
        async def mcp(request: Request, key: Reader) -> Response:
            request.scope[_KEY] = key
            return _Handled(endpoint.servers[keys.grants(key.scopes, "write")])

        return router


class _Handled(Response):
    """A response the MCP session manager writes itself, on the request's own connection."""

    def __init__(self, server: CairnMCPServer) -> None:
        super().__init__()
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.server.session_manager.handle_request(scope, receive, send)
