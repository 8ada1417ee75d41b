"""Applying pulled states to the local store: merge, write, then the rules that follow from it.

Runs inside one write transaction per pulled page. Memories new to this device are written in
bulk; known ones are merged (``cairn.sync.merge``). Then two rules that every replica applies the
same way, so they converge without coordination:

- topic chains: a memory with a ``topic_key`` is placed in its chain (``relations.link_topic``);
- duplicates: live memories of one project with identical content collapse onto the one with the
  smallest id; the others become tombstones marked ``duplicate_of`` it, their tags merged in.

Those rules write ordinary local changes (outbox entries), so they travel like any other edit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from cairn.replication import MemoryState, RelationState
from cairn.store import clock, memories, relations, replica
from cairn.sync.merge import merge_memory, merge_relation


@dataclass
class Applied:
    """What one page did to the store."""

    memories: int = 0
    relations: int = 0
    unchanged: int = 0
    duplicates_merged: int = 0
    needs_vector: list[str] = field(default_factory=list)


def apply(
    conn: sqlite3.Connection,
    states: Sequence[MemoryState | RelationState],
    model_id: str,
) -> Applied:
    """Merge ``states`` into the store (call inside ``Database.write()``)."""
    result = Applied()
    incoming: dict[str, MemoryState] = {}
    links: dict[str, RelationState] = {}
    for state in states:
        if isinstance(state, RelationState):
            links[state.key] = merge_relation(links.get(state.key), state)
            continue
        if state.memory.model_id != model_id and state.vector is not None:
            # Trigger: a vector from another embedding model. Why: it cannot be searched next to
            # ours. Outcome: stored without it; the caller embeds the content again.
            state = replace(state, vector=None, memory=replace(state.memory, model_id=None))
        previous = incoming.get(state.memory.id)
        incoming[state.memory.id] = merge_memory(previous, state).state if previous else state
    if not incoming and not links:
        return result
    hlcs = [s.hlc for s in incoming.values()] + [r.hlc for r in links.values()]
    clock.observe_hlc(conn, max(hlcs))

    local = replica.memory_states(conn, list(incoming))
    fresh: list[MemoryState] = []
    touched: list[MemoryState] = []  # states whose content or existence is new here
    for memory_id, state in incoming.items():
        if memory_id not in local:
            fresh.append(state)
            touched.append(state)
            continue
        rowid, known = local[memory_id]
        merged = merge_memory(known, state)
        if not merged.changed:
            result.unchanged += 1
            continue
        replica.update_state(conn, rowid, merged.state)
        result.memories += 1
        if merged.content_changed:
            touched.append(merged.state)
    replica.insert_states(conn, fresh)
    result.memories += len(fresh)

    known_relations = replica.relation_states(conn, list(links))
    for key, relation in links.items():
        merged_relation = merge_relation(known_relations.get(key), relation)
        if merged_relation == known_relations.get(key):
            result.unchanged += 1
            continue
        replica.put_relation(conn, merged_relation)
        result.relations += 1

    fresh_ids = {s.memory.id for s in fresh}
    live = [s.memory for s in touched if not s.memory.deleted]
    shared = memories.shared_hashes(conn, list({m.content_hash for m in live}))
    for state in touched:
        memory = state.memory
        if memory.topic_key and memory.id in fresh_ids:
            relations.link_topic(conn, memory)
        if memory.deleted:
            continue
        if (memory.project, memory.content_hash) in shared:
            result.duplicates_merged += relations.collapse(
                conn, memory.project, memory.content_hash
            )
        if state.vector is None:
            result.needs_vector.append(memory.id)
    return result
