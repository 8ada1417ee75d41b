"""Cairn's memory tools for MCP, one definition for every MCP server that offers them.

The local server (``cairn mcp``, over a device's store) and the sync server's ``/mcp`` (over a
hosted workspace) register the same tools, with the same descriptions and compact answers
(``cairn.agent_text``), against anything with the memory verbs of ``MemoryVerbs``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, Protocol

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, InputRequiredResult, ToolAnnotations
from pydantic import Field, ValidationError

from cairn import agent_text, model
from cairn.errors import CairnError
from cairn.memory_rules import MAX_LIMIT
from cairn.model import Filters, Hit, Memory, Relation, RememberResult
from cairn.version import __version__

INSTRUCTIONS = """\
Cairn is your long-term memory across sessions, shared with the user's other agents.
Call `recall` at the start of a task and whenever you are unsure about a decision, convention,
preference or past problem. Call `remember` when you learn something worth keeping after this
conversation ends: one self-contained idea per memory, never secrets."""

_KINDS = ", ".join(model.KINDS)


class MemoryVerbs(Protocol):
    """What the memory tools call: a device's ``Store``, or a hosted workspace seen by one key."""

    @property
    def project(self) -> str: ...

    def remember(
        self,
        content: str,
        kind: str = ...,
        project: str | None = ...,
        tags: Sequence[str] = ...,
        topic_key: str | None = ...,
    ) -> RememberResult: ...

    def recall(self, query: str, filters: Filters | None = ..., limit: int = ...) -> list[Hit]: ...

    def get(self, memory_id: str) -> Memory: ...

    def relations(self, memory_id: str) -> Sequence[Relation]: ...

    def edit(
        self,
        memory_id: str,
        *,
        content: str | None = ...,
        kind: str | None = ...,
        tags: Sequence[str] = ...,
    ) -> Memory: ...

    def forget(self, memory_id: str) -> Memory: ...

    def list(self, filters: Filters | None = ..., limit: int = ...) -> list[Memory]: ...

    def count(self, filters: Filters | None = ...) -> int: ...


VerbsFor = Callable[[Context[Any, Any]], MemoryVerbs]
"""The verbs one tool call works on: the server's one store, or the caller's workspace."""


@contextmanager
def tool_errors() -> Iterator[None]:
    """Turn a CairnError into a tool error: the one error mapping of Cairn's MCP servers.

    The agent gets ``is_error`` with the text ``<code>: <message>``, the message saying what to
    do next. Any other exception is a crash, which the SDK logs and reports to the agent only as
    "Error executing tool <name>".
    """
    try:
        yield
    except CairnError as exc:
        raise ToolError(f"{exc.code}: {_for_agents(exc.message)}") from exc


def _for_agents(message: str) -> str:
    """A message written for the CLI, pointed at the tools instead of its commands."""
    return message.replace("`cairn list`", "list_memories").replace("`cairn show`", "get")


class CairnMCPServer(MCPServer):
    """The SDK's server, saying bad arguments in one line per field instead of pydantic's
    multi-line dump (which also names internal model names and documentation URLs)."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if not isinstance(exc.__cause__, ValidationError):
                raise
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or 'arguments'}: {error['msg']}"
                for error in exc.__cause__.errors(include_url=False)
            )
            raise ToolError(f"invalid_input: {problems}") from exc.__cause__


def new_server(instructions: str = INSTRUCTIONS) -> CairnMCPServer:
    """An MCP server named cairn, at this version, logging warnings only."""
    return CairnMCPServer(
        "cairn", version=__version__, instructions=instructions, log_level="WARNING"
    )


# --- arguments --------------------------------------------------------------------------------
# Module level: with postponed annotations the SDK resolves these names in this module.

Content = Annotated[
    str,
    Field(description="The knowledge, self-contained (name the thing, say why); max 64 KiB."),
]
Kind = Annotated[
    str,
    Field(description=f"What sort of memory: one of {_KINDS} (any lowercase word is accepted)."),
]
OwnProject = Annotated[
    str | None, Field(description="The project it belongs to; omit for the current project.")
]
Tags = Annotated[
    Sequence[str],
    Field(description="Short labels, e.g. ['deploy', 'ci']; lowercased, no spaces or commas."),
]
TopicKey = Annotated[
    str | None,
    Field(
        description="A stable name for the topic, e.g. 'deploy-strategy'; a later memory with "
        "the same project and topic_key supersedes this one."
    ),
]
Query = Annotated[
    str, Field(description="What you are looking for, in plain words or exact terms.")
]
ProjectFilter = Annotated[
    str | None, Field(description="Only this project; omit for every project.")
]
KindsFilter = Annotated[
    Sequence[str], Field(description="Only these kinds (any of them); empty for every kind.")
]
TagsFilter = Annotated[
    Sequence[str], Field(description="Only memories with all of these tags; empty for no filter.")
]
MemoryId = Annotated[
    str, Field(description="The memory's id, or a unique prefix of at least 8 characters.")
]
Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT, description="How many memories at most.")]
NewContent = Annotated[
    str | None, Field(description="The corrected text (embedded again); omit to keep it.")
]
NewKind = Annotated[str | None, Field(description=f"A new kind ({_KINDS}); omit to keep it.")]
AddTags = Annotated[
    Sequence[str], Field(description="Tags to add (tags only grow, so that sync can merge them).")
]


# --- the tools --------------------------------------------------------------------------------


def add_memory_tools(
    server: MCPServer, verbs: VerbsFor, current: str, writable: bool = True
) -> None:
    """Register the memory tools on ``server``; each call works on ``verbs(context)``.
    ``current``: the current project the descriptions name; without ``writable``, only the
    tools that read (for a key that may not write)."""
    everywhere = f"Without project, it covers every project; the current one is {current!r}."
    write = _Writes(server, writable)

    @write(
        description=(
            "Save one piece of knowledge to long-term memory so that you or another agent can "
            "recall it in a later session. Call it when you learn something worth keeping after "
            "this conversation ends: a decision and its reason (kind decision), a fact about the "
            "code or its environment (fact), something the user prefers (preference), a trap "
            "that cost time (gotcha); anything else is a note. One self-contained idea per "
            "memory, in words that make sense without this conversation; never secrets. "
            "Identical content in the same project is stored once: remembering it again says "
            "'already remembered' with the existing id. With topic_key, the new memory supersedes "
            "the older one on that topic (the old one stays as history and ranks below it). "
            "The answer lists near duplicates: existing memories that say nearly the same "
            "thing; forget one if it is now wrong. Without project, the memory goes to the "
            f"current project, {current!r}."
        ),
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False),
        structured_output=False,
    )
    def remember(
        content: Content,
        kind: Kind = model.DEFAULT_KIND,
        project: OwnProject = None,
        tags: Tags = (),
        topic_key: TopicKey = None,
        ctx: Context | None = None,
    ) -> str:
        with tool_errors():
            result = _verbs(verbs, ctx).remember(content, kind, project, tags, topic_key)
        return agent_text.remembered(result)

    @server.tool(
        description=(
            "Search long-term memory by meaning and by keyword; results come best first. Call it "
            "at the start of a task, before a decision the team may already have made, and "
            "whenever you are unsure about a convention, preference or past problem. Ask in "
            "plain words ('how do we deploy to production?'); exact names match by keyword too. "
            "Each result is numbered, then its id, kind, project, #tags, topic and date, its "
            "content, and why it matched (e.g. 'semantic #1 (cosine 0.71); keyword #2 (bm25 "
            "3.1)'); a result 'superseded by' another id has a newer memory on the same topic: "
            f"trust that one. {everywhere}"
        ),
        annotations=ToolAnnotations(read_only_hint=True),
        structured_output=False,
    )
    def recall(
        query: Query,
        project: ProjectFilter = None,
        kinds: KindsFilter = (),
        tags: TagsFilter = (),
        limit: Limit = 10,
        ctx: Context | None = None,
    ) -> str:
        with tool_errors():
            hits = _verbs(verbs, ctx).recall(query, Filters.parse(project, kinds, tags), limit)
        return agent_text.hits(hits)

    @server.tool(
        description=(
            "Read one memory in full by id (from recall or list_memories; a unique prefix of 8+ "
            "characters works): its facets, content and relations (what it supersedes or is "
            "superseded by, duplicates, related memories)."
        ),
        annotations=ToolAnnotations(read_only_hint=True),
        structured_output=False,
    )
    def get(id: MemoryId, ctx: Context | None = None) -> str:
        with tool_errors():
            store = _verbs(verbs, ctx)
            memory = store.get(id)
            relations = store.relations(memory.id)
        return agent_text.full(memory, [r.seen_from(memory.id) for r in relations])

    @write(
        description=(
            "Correct a memory in place by id: new content (embedded again), a new kind, and/or "
            "tags to add. The change syncs to the user's other devices. Use it to fix a memory "
            "that is slightly wrong; to record that knowledge changed over time, prefer remember "
            "with the same topic_key, which keeps the history."
        ),
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False),
        structured_output=False,
    )
    def edit(
        id: MemoryId,
        content: NewContent = None,
        kind: NewKind = None,
        add_tags: AddTags = (),
        ctx: Context | None = None,
    ) -> str:
        with tool_errors():
            memory = _verbs(verbs, ctx).edit(id, content=content, kind=kind, tags=add_tags)
        return f"edited {agent_text.memory_line(memory)}"

    @write(
        description=(
            "Forget a memory by id (from recall or list_memories). Use it when a memory is "
            "wrong, obsolete, or saved by mistake: its content, tags and embedding are erased "
            "for good and it no longer appears in recall or list_memories. To update knowledge, "
            "prefer remember with the same topic_key, which keeps the history."
        ),
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True),
        structured_output=False,
    )
    def forget(id: MemoryId, ctx: Context | None = None) -> str:
        with tool_errors():
            memory = _verbs(verbs, ctx).forget(id)
        return f"forgot {memory.id}"

    @server.tool(
        description=(
            "List memories newest first, without a query: to see what is known about a project "
            "or to find ids. Filters combine. The last line says how many of the matching "
            f"memories are shown, so you can tell when limit cut the list. {everywhere}"
        ),
        annotations=ToolAnnotations(read_only_hint=True),
        structured_output=False,
    )
    def list_memories(
        project: ProjectFilter = None,
        kinds: KindsFilter = (),
        tags: TagsFilter = (),
        limit: Limit = 20,
        ctx: Context | None = None,
    ) -> str:
        with tool_errors():
            store = _verbs(verbs, ctx)
            filters = Filters.parse(project, kinds, tags)
            memories = store.list(filters, limit)
            total = store.count(filters)
        return agent_text.listing(memories, total)


class _Writes:
    """A decorator like ``server.tool`` that registers a tool that writes only if ``writable``."""

    def __init__(self, server: MCPServer, writable: bool) -> None:
        self.server, self.writable = server, writable

    def __call__(self, **options: Any) -> Callable[[Callable[..., str]], Callable[..., str]]:
        register = self.server.tool(**options)

        def decorate(tool: Callable[..., str]) -> Callable[..., str]:
            return register(tool) if self.writable else tool

        return decorate


def _verbs(verbs: VerbsFor, ctx: Context[Any, Any] | None) -> MemoryVerbs:
    assert ctx is not None  # the SDK passes every tool its context
    return verbs(ctx)
