"""Results as compact plain text for agents: what every MCP tool answers (no I/O).

An agent pays for every token it reads, so a result is said once, as short lines: no JSON keys
repeated per item, no indentation, no field that carries nothing (an empty tag list, a null
topic). Ids stay whole, because the agent passes them back to `forget`, `get` and `edit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from cairn.model import Hit, Memory, RememberResult


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def labels(memory: Memory) -> str:
    """``kind · project · #tag #tag · topic:key · date``: the memory's facets in one line."""
    parts = [memory.kind, memory.project]
    if memory.tags:
        parts.append(" ".join(f"#{tag}" for tag in memory.tags))
    if memory.topic_key:
        parts.append(f"topic:{memory.topic_key}")
    parts.append(_day(memory.created_at))
    return " · ".join(parts)


def memory_line(memory: Memory) -> str:
    """The id and facets on one line, the content on the next."""
    return f"{memory.id} {labels(memory)}\n{memory.content}"


def remembered(result: RememberResult) -> str:
    memory = result.memory
    verb = "remembered" if result.created else "already remembered (tags merged)"
    lines = [f"{verb} {memory.id} {labels(memory)}"]
    if result.supersedes:
        lines.append(f"supersedes {result.supersedes} (same topic_key)")
    if result.near_duplicates:
        near = ", ".join(f"{s.id} ({s.similarity:.2f})" for s in result.near_duplicates)
        lines.append(f"near duplicates, kept apart: {near}")
    return "\n".join(lines)


def hits(found: Sequence[Hit]) -> str:
    """Numbered best first; ``why`` says how each matched, and a superseded hit names the
    memory to trust instead."""
    if not found:
        return "no memory matched"
    blocks = []
    for n, hit in enumerate(found, 1):
        block = f"{n}. {memory_line(hit.memory)}\nwhy: {hit.match.explain()}"
        if hit.match.superseded_by:
            block += " (prefer the newer memory)"
        blocks.append(block)
    return "\n\n".join(blocks)


def listing(memories: Sequence[Memory], total: int) -> str:
    if not memories:
        return "no memory matched" if total == 0 else f"none on this page of {total}"
    blocks = [memory_line(m) for m in memories]
    more = f"; {total - len(memories)} more beyond the limit" if total > len(memories) else ""
    return "\n\n".join(blocks) + f"\n\n{len(memories)} of {total} shown{more}"


def full(memory: Memory, related: Sequence[tuple[str, str]]) -> str:
    """A memory with every facet and its relations, as ``(phrase, other id)`` pairs."""
    lines = [f"{memory.id} {labels(memory)}"]
    lines += [f"{phrase} {other}" for phrase, other in related]
    return "\n".join(lines) + f"\n\n{memory.content}"


def fields(data: dict[str, object]) -> str:
    """``key: value`` lines, leaving out empty values."""
    return "\n".join(f"{k}: {v}" for k, v in data.items() if v not in (None, "", [], ()))
