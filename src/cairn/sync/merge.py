"""The merge rule: deterministic, the same on every replica, whatever the order.

Merging two states of one memory is commutative, associative and idempotent, so replicas that
have seen the same states hold the same memory however those states arrived:

- each field in ``CLOCKED_FIELDS`` takes the value with the newer clock (last writer wins);
- tags are the union of both sides (a set that only grows while the memory lives);
- a tombstone wins: once either side is deleted, the merge is deleted and holds no content;
- content versions carry their ancestors; a losing version that is not an ancestor of the
  winner was written concurrently: it is kept in ``revisions`` (a conflict) until a later
  version names it as an ancestor (``cairn sync resolve``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cairn.replication import CLOCKED_FIELDS, CONTENT_CLOCK, MemoryState, RelationState, Revision


@dataclass(frozen=True)
class Merged:
    state: MemoryState
    changed: bool
    content_changed: bool


def merge_memory(local: MemoryState | None, incoming: MemoryState) -> Merged:
    if local is None:
        return Merged(incoming, True, True)
    created_hlc = min(local.created_hlc, incoming.created_hlc)
    winners = {f: incoming if incoming.clock(f) > local.clock(f) else local for f in CLOCKED_FIELDS}
    clocks = {f: max(local.clock(f), incoming.clock(f)) for f in CLOCKED_FIELDS}
    ancestors = tuple(sorted({*local.ancestors, *incoming.ancestors}))
    deleted = local.memory.deleted or incoming.memory.deleted
    text = winners[CONTENT_CLOCK]
    loser = local if text is incoming else incoming
    revisions = {r.hlc: r for r in (*local.revisions, *incoming.revisions)}
    lost = loser.clock(CONTENT_CLOCK)
    revisions.setdefault(lost, Revision(lost, loser.memory.content, loser.memory.content_hash))
    current = text.clock(CONTENT_CLOCK)
    kept = tuple(
        revisions[h]
        for h in sorted(revisions)
        if not deleted and h != current and h not in ancestors
    )
    memory = replace(
        local.memory,
        content=text.memory.content,
        content_hash=text.memory.content_hash,
        model_id=text.memory.model_id,
        kind=winners["kind"].memory.kind,
        project=winners["project"].memory.project,
        topic_key=winners["topic_key"].memory.topic_key,
        source=winners["source"].memory.source,
        created_at=winners["created_at"].memory.created_at,
        updated_at=max(local.memory.updated_at, incoming.memory.updated_at),
        tags=tuple(sorted({*local.memory.tags, *incoming.memory.tags})),
        deleted=deleted,
        hlc=max(local.hlc, incoming.hlc),
    )
    vector = text.vector
    if deleted:
        memory = replace(memory, content="", content_hash="", tags=(), model_id=None)
        vector = None
    state = MemoryState(
        memory,
        created_hlc,
        {f: c for f, c in clocks.items() if c != created_hlc},
        ancestors,
        vector,
        kept,
    )
    return Merged(
        state,
        changed=state != local,
        content_changed=memory.content_hash != local.memory.content_hash,
    )


def merge_relation(local: RelationState | None, incoming: RelationState) -> RelationState:
    """Whether a relation exists follows its newest change; it dates from its first."""
    if local is None:
        return incoming
    newest = incoming if incoming.hlc > local.hlc else local
    return replace(newest, created_at=min(local.created_at, incoming.created_at), hlc=newest.hlc)


def edited(
    state: MemoryState,
    hlc: str,
    now: int,
    *,
    content: tuple[str, str, str | None, bytes | None] | None = None,
    kind: str | None = None,
    tags: tuple[str, ...] = (),
) -> MemoryState:
    """``state`` after one edit at clock ``hlc``: new ``content`` as (text, hash, model id,
    vector), whose ancestors then include the version it replaces; a new kind; tags added.
    The same rules a device's store applies when it edits a row."""
    memory, clocks, ancestors = state.memory, dict(state.field_hlc), state.ancestors
    vector = state.vector
    if content is not None:
        text, digest, model_id, vector = content
        ancestors = tuple(sorted({*ancestors, state.clock(CONTENT_CLOCK)}))
        memory = replace(memory, content=text, content_hash=digest, model_id=model_id)
        clocks[CONTENT_CLOCK] = hlc
    if kind is not None and kind != memory.kind:
        memory = replace(memory, kind=kind)
        clocks["kind"] = hlc
    memory = replace(memory, tags=tuple(sorted({*memory.tags, *tags})))
    if memory == state.memory:
        return state
    memory = replace(memory, updated_at=now, hlc=hlc)
    return replace(state, memory=memory, field_hlc=clocks, ancestors=ancestors, vector=vector)


def forgotten(state: MemoryState, hlc: str, now: int) -> MemoryState:
    """``state`` as a tombstone at clock ``hlc``: content, tags and vector erased."""
    memory = replace(
        state.memory,
        content="",
        content_hash="",
        tags=(),
        model_id=None,
        deleted=True,
        updated_at=now,
        hlc=hlc,
    )
    clocks = {**state.field_hlc, "deleted": hlc}
    return replace(state, memory=memory, field_hlc=clocks, vector=None, revisions=())
