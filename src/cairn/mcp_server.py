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
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

import cairn
from cairn import model
from cairn.config import Settings
from cairn.errors import CairnError, StoreError
from cairn.model import Filters, Hit, Memory, RememberResult
from cairn.service import MAX_LIMIT, Store

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
        raise ToolError(f"{exc.code}: {exc.message}") from exc


# --- results ----------------------------------------------------------------------------------
# Trimmed views of the model's to_dict(): what an agent needs to act, not the sync bookkeeping.


class MemoryOut(BaseModel):
    id: str = Field(description="UUIDv7; any unique prefix of 8+ characters also finds it.")
    content: str
    kind: str
    project: str
    tags: list[str]
    topic_key: str | None
    created_at: str = Field(description="ISO-8601, UTC.")

    @classmethod
    def of(cls, memory: Memory) -> MemoryOut:
        return cls.model_validate(memory.to_dict())


class SimilarOut(BaseModel):
    id: str
    similarity: float = Field(description="Cosine similarity to the new memory.")


class RememberOut(MemoryOut):
    created: bool = Field(description="False when identical content was already remembered.")
    supersedes: str | None = Field(description="The id of the older memory on this topic_key.")
    near_duplicates: list[SimilarOut] = Field(
        description="Existing memories that say nearly the same thing (kept, not merged)."
    )

    @classmethod
    def of_result(cls, result: RememberResult) -> RememberOut:
        return cls.model_validate(result.to_dict())


class HitOut(MemoryOut):
    score: float = Field(description="Fused rank score; only the order matters.")
    why: str = Field(description="How it matched, e.g. 'semantic #1 (cosine 0.71)'.")
    superseded_by: str | None = Field(
        description="The id of a newer memory on the same topic; prefer that one."
    )

    @classmethod
    def of_hit(cls, hit: Hit) -> HitOut:
        data = hit.to_dict()
        return cls.model_validate({**data, "superseded_by": data["match"]["superseded_by"]})


class RecallOut(BaseModel):
    results: list[HitOut] = Field(description="Best first; empty when nothing matched.")


class ListOut(BaseModel):
    memories: list[MemoryOut] = Field(description="Newest first.")
    total: int = Field(description="How many memories match the filters, beyond the limit too.")


class ForgetOut(BaseModel):
    id: str = Field(description="The full id of the forgotten memory.")
    forgotten: bool


class SyncStatusOut(BaseModel):
    configured: bool = Field(description="False until `cairn sync setup` has run on this device.")
    remote: str | None
    phase: str = Field(
        description="idle | pushing | pulling | healthy | backoff | degraded | disabled."
    )
    reason: str | None = Field(
        description="Why, when not healthy: e.g. unreachable, auth_failed, quota_exceeded, "
        "key_mismatch, payload_too_large, dead_letter, sync_not_configured, other_worker."
    )
    message: str = Field(description="What is happening, or what the user should do.")
    worker_running: bool = Field(description="Whether a background sync worker runs now.")
    last_success_at: str | None = Field(description="ISO-8601, UTC: the worker's last success.")
    pending: int = Field(description="Local changes not yet sent.")
    dead_letters: int = Field(description="Changes the remote refused; the user must look.")
    conflicts: int = Field(description="Memories two devices changed at once, to settle.")
    last_push_at: str | None
    last_pull_at: str | None

    @classmethod
    def of(cls, status: dict[str, Any]) -> SyncStatusOut:
        worker = status["worker"]
        shown = ("phase", "reason", "message", "worker_running", "last_success_at")
        return cls.model_validate({**status, **{k: worker[k] for k in shown}})


class SyncNowOut(BaseModel):
    pushed: int = Field(description="Local changes the remote acknowledged.")
    received: int = Field(description="Changes from other devices that arrived.")
    applied: int = Field(description="Of those, how many changed a memory here.")
    dead_lettered: int = Field(description="Changes refused or unreadable (see sync_status).")

    @classmethod
    def of(cls, report: dict[str, dict[str, Any]]) -> SyncNowOut:
        steps = report.values()
        return cls(
            pushed=sum(s.get("pushed", 0) for s in steps),
            received=sum(s.get("received", 0) for s in steps),
            applied=sum(s.get("applied", 0) for s in steps),
            dead_lettered=sum(s.get("dead_lettered", 0) + s.get("failed", 0) for s in steps),
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


# --- the server -------------------------------------------------------------------------------


def create_server(store: Store, sync: cairn.SyncControl | None = None) -> MCPServer:
    """An MCP server whose tools call ``store`` (and ``sync``, which adds the sync tools); the
    caller keeps ownership of both."""
    server = MCPServer(
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
            "Identical content in the same project is stored once: remembering it again returns "
            "the existing memory with created=false. With topic_key, the new memory supersedes "
            "the older one on that topic (the old one stays as history and ranks below it). "
            "near_duplicates lists existing memories that say nearly the same thing; forget one "
            "if it is now wrong. Without project, the memory goes to the current project, "
            f"{store.project!r}."
        ),
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False),
    )
    def remember(
        content: Content,
        kind: Kind = model.DEFAULT_KIND,
        project: OwnProject = None,
        tags: Tags = (),
        topic_key: TopicKey = None,
    ) -> RememberOut:
        with tool_errors():
            result = store.remember(content, kind, project, tags, topic_key)
        return RememberOut.of_result(result)

    @server.tool(
        description=(
            "Search long-term memory by meaning and by keyword; results come best first. Call it "
            "at the start of a task, before a decision the team may already have made, and "
            "whenever you are unsure about a convention, preference or past problem. Ask in "
            "plain words ('how do we deploy to production?'); exact names match by keyword too. "
            "Each result has the memory (id, content, kind, project, tags, created_at), a score "
            "(only the order matters), why (how it matched, e.g. 'semantic #1 (cosine 0.71); "
            "keyword #2 (bm25 3.10)') and superseded_by (a newer memory on the same topic; "
            f"trust that one). {everywhere}"
        ),
        annotations=ToolAnnotations(read_only_hint=True),
    )
    def recall(
        query: Query,
        project: ProjectFilter = None,
        kinds: KindsFilter = (),
        tags: TagsFilter = (),
        limit: Limit = 10,
    ) -> RecallOut:
        with tool_errors():
            hits = store.recall(query, Filters.parse(project, kinds, tags), limit)
        return RecallOut(results=[HitOut.of_hit(hit) for hit in hits])

    @server.tool(
        description=(
            "Forget a memory by id (from recall or list_memories). Use it when a memory is "
            "wrong, obsolete, or saved by mistake: its content, tags and embedding are erased "
            "for good and it no longer appears in recall or list_memories. To update knowledge, "
            "prefer remember with the same topic_key, which keeps the history."
        ),
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True),
    )
    def forget(id: MemoryId) -> ForgetOut:
        with tool_errors():
            memory = store.forget(id)
        return ForgetOut(id=memory.id, forgotten=True)

    @server.tool(
        description=(
            "List memories newest first, without a query: to see what is known about a project "
            "or to find ids. Filters combine. total is how many memories match the filters, so "
            f"you can tell when limit cut the list. {everywhere}"
        ),
        annotations=ToolAnnotations(read_only_hint=True),
    )
    def list_memories(
        project: ProjectFilter = None,
        kinds: KindsFilter = (),
        tags: TagsFilter = (),
        limit: Limit = 20,
    ) -> ListOut:
        with tool_errors():
            filters = Filters.parse(project, kinds, tags)
            memories = store.list(filters, limit)
            total = store.count(filters)
        return ListOut(memories=[MemoryOut.of(m) for m in memories], total=total)

    if sync is not None:
        _sync_tools(server, sync)
    return server


def _sync_tools(server: MCPServer, sync: cairn.SyncControl) -> None:
    @server.tool(
        description=(
            "Whether this device's memories are in sync with the user's other devices: the "
            "phase (healthy, backoff, degraded, disabled...), a reason code and a message, the "
            "last success, and counts of changes waiting to be sent, refused (dead letters) or "
            "in conflict. Sync runs by itself in the background; call this when the user asks "
            "about sync or a memory from another device seems missing, and relay the message "
            "when it says the user must act (for example auth_failed or dead letters)."
        ),
        annotations=ToolAnnotations(read_only_hint=True),
    )
    def sync_status() -> SyncStatusOut:
        with tool_errors():
            return SyncStatusOut.of(sync.status())

    @server.tool(
        description=(
            "Sync now instead of waiting for the background sync (a few seconds): send this "
            "device's changes and receive the other devices'. Call it when the user asks, or "
            "before relying on a memory another device has just written. Returns the counts; "
            "it fails with a reason code (e.g. unreachable, auth_failed, sync_not_configured) "
            "and changes nothing local when sync cannot run."
        ),
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False),
    )
    def sync_now() -> SyncNowOut:
        with tool_errors():
            return SyncNowOut.of(sync.now())


def run(settings: Settings, autosync: bool = True) -> None:
    """Serve the tools on stdin/stdout until the client disconnects, then close the store;
    meanwhile (unless ``autosync`` is off) the store syncs in the background."""
    with cairn.build(settings) as store:
        try:
            store.warm_up()  # so the agent's first recall is not slow
        except StoreError as exc:
            # Trigger: a damaged (or long-locked) store. Why: the agent learns what is wrong
            # and what to do only from a server that answers. Outcome: served anyway; each
            # tool that touches the damage answers the error, the message on stderr too.
            print(f"cairn mcp: {exc.message}", file=sys.stderr)
        sync = cairn.SyncControl(settings, store, autosync)
        try:
            create_server(store, sync).run("stdio")
        finally:
            sync.close()
