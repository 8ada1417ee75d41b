"""The MCP server: Cairn's verbs as tools an agent calls over stdio (`cairn mcp`).

``run`` is the composition root of this edge; ``create_server`` registers the tools against a
store that is already built, so tests and other hosts can wire their own.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, InputRequiredResult, ToolAnnotations
from pydantic import Field, ValidationError

import cairn
from cairn import agent_text, model, wiring
from cairn.device_store import Store
from cairn.errors import CairnError, StoreError
from cairn.memory_rules import MAX_LIMIT
from cairn.model import Filters
from cairn.settings import Settings

INSTRUCTIONS = """\
Cairn is your long-term memory across sessions, shared with the user's other agents.
Call `recall` at the start of a task and whenever you are unsure about a decision, convention,
preference or past problem. Call `remember` when you learn something worth keeping after this
conversation ends: one self-contained idea per memory, never secrets."""

_KINDS = ", ".join(model.KINDS)


@contextmanager
def tool_errors() -> Iterator[None]:
    """Turn a CairnError into a tool error: the one error mapping of this edge.

    The agent gets ``is_error`` with the text ``<code>: <message>``, the message saying what to
    do next. Any other exception is a crash, which the SDK logs and reports to the agent only as
    "Error executing tool <name>".
    """
    try:
        yield
    except CairnError as exc:
        raise ToolError(f"{exc.code}: {_for_agents(exc.message)}") from exc


def _for_agents(message: str) -> str:
    """A message written for the CLI, pointed at this edge's tools instead of its commands."""
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


# --- the server -------------------------------------------------------------------------------


def create_server(store: Store, sync: wiring.SyncControl | None = None) -> MCPServer:
    """An MCP server whose tools call ``store`` (and ``sync``, which adds the sync tools); the
    caller keeps ownership of both."""
    server = CairnMCPServer(
        "cairn", version=cairn.__version__, instructions=INSTRUCTIONS, log_level="WARNING"
    )
    # The SDK serves requests concurrently and runs each sync tool on a worker thread; a Store
    # is safe to share between threads, so the tools call it directly.
    everywhere = f"Without project, it covers every project; the current one is {store.project!r}."

    @server.tool(
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
            f"current project, {store.project!r}."
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
    ) -> str:
        with tool_errors():
            result = store.remember(content, kind, project, tags, topic_key)
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
    ) -> str:
        with tool_errors():
            hits = store.recall(query, Filters.parse(project, kinds, tags), limit)
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
    def get(id: MemoryId) -> str:
        with tool_errors():
            memory = store.get(id)
            relations = store.relations(memory.id)
        return agent_text.full(memory, [r.seen_from(memory.id) for r in relations])

    @server.tool(
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
        id: MemoryId, content: NewContent = None, kind: NewKind = None, add_tags: AddTags = ()
    ) -> str:
        with tool_errors():
            memory = store.edit(id, content=content, kind=kind, tags=add_tags)
        return f"edited {agent_text.memory_line(memory)}"

    @server.tool(
        description=(
            "Forget a memory by id (from recall or list_memories). Use it when a memory is "
            "wrong, obsolete, or saved by mistake: its content, tags and embedding are erased "
            "for good and it no longer appears in recall or list_memories. To update knowledge, "
            "prefer remember with the same topic_key, which keeps the history."
        ),
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True),
        structured_output=False,
    )
    def forget(id: MemoryId) -> str:
        with tool_errors():
            memory = store.forget(id)
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
    ) -> str:
        with tool_errors():
            filters = Filters.parse(project, kinds, tags)
            memories = store.list(filters, limit)
            total = store.count(filters)
        return agent_text.listing(memories, total)

    if sync is not None:
        _sync_tools(server, sync)
    return server


def _sync_tools(server: MCPServer, sync: wiring.SyncControl) -> None:
    @server.tool(
        description=(
            "Whether this device's memories are in sync with the user's other devices: the "
            "phase (idle, pushing, pulling, healthy, backoff, degraded, disabled), a reason code "
            "when not healthy (e.g. unreachable, auth_failed, quota_exceeded, key_mismatch, "
            "dead_letter), a message, the last success, and counts of changes waiting to be "
            "sent, refused (dead letters) or in conflict. Sync runs by itself in the "
            "background; call this when the user asks about sync or a memory from another "
            "device seems missing, and relay the message "
            "when it says the user must act (for example auth_failed or dead letters)."
        ),
        annotations=ToolAnnotations(read_only_hint=True),
        structured_output=False,
    )
    def sync_status() -> str:
        with tool_errors():
            status = sync.status()
        worker = status["worker"]
        return agent_text.fields(
            {
                "phase": worker["phase"],
                "reason": worker["reason"],
                "message": worker["message"],
                "remote": status["remote"] or "none (sync is not set up on this device)",
                "pending": status["pending"],
                "dead letters": status["dead_letters"],
                "conflicts": status["conflicts"],
                "last success": worker["last_success_at"],
                "last push": status["last_push_at"],
                "last pull": status["last_pull_at"],
                "background worker": "running" if worker["worker_running"] else "not running",
            }
        )

    @server.tool(
        description=(
            "Sync now instead of waiting for the background sync (a few seconds): send this "
            "device's changes and receive the other devices'. Call it when the user asks, or "
            "before relying on a memory another device has just written. Returns the counts; "
            "it fails with a reason code (e.g. unreachable, auth_failed, sync_not_configured) "
            "and changes nothing local when sync cannot run."
        ),
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False),
        structured_output=False,
    )
    def sync_now() -> str:
        with tool_errors():
            steps = sync.now().values()
        total = {
            key: sum(step.get(key, 0) for step in steps)
            for key in ("pushed", "received", "applied", "dead_lettered", "failed")
        }
        return (
            f"pushed {total['pushed']}, received {total['received']}, applied "
            f"{total['applied']}, refused or unreadable {total['dead_lettered'] + total['failed']}"
            + (" (see sync_status)" if total["dead_lettered"] + total["failed"] else "")
        )


def run(settings: Settings, autosync: bool = True) -> None:
    """Serve the tools on stdin/stdout until the client disconnects, then close the store;
    meanwhile (unless ``autosync`` is off) the store syncs in the background."""
    with wiring.build(settings) as store:
        try:
            store.warm_up()  # so the agent's first recall is not slow
        except StoreError as exc:
            # Trigger: a damaged (or long-locked) store. Why: the agent learns what is wrong
            # and what to do only from a server that answers. Outcome: served anyway; each
            # tool that touches the damage answers the error, the message on stderr too.
            print(f"cairn mcp: {exc.message}", file=sys.stderr)
        sync = wiring.SyncControl(settings, store, autosync)
        try:
            create_server(store, sync).run("stdio")
        finally:
            sync.close()
