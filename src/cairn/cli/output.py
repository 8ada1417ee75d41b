"""Rendering results for people (rich) and for scripts (JSON on stdout)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.markup import escape

from cairn.model import Hit, Memory, Relation, RememberResult, iso

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
PREVIEW = 300


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 change``, ``2 changes``, ``no changes``."""
    many = nouns or f"{noun}s"
    if count == 0:
        return f"no {many}"
    return f"{count} {noun if count == 1 else many}"


def announce(line: str) -> None:
    """A line about the process itself (where it listens, what it does) on stderr, stamped
    with the local time: stdout stays for data, and a service log shows when it happened."""
    stamp = datetime.now().astimezone().isoformat(timespec="seconds")
    err.print(f"[dim]{stamp}[/] {escape(line)}")


def _preview(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= PREVIEW else flat[: PREVIEW - 1] + "…"


def _labels(memory: Memory) -> str:
    tags = " ".join(f"#{t}" for t in memory.tags)
    return " · ".join(p for p in (memory.kind, memory.project, tags) if p)


def remembered(result: RememberResult) -> None:
    memory = result.memory
    if result.created:
        out.print(f"[green]remembered[/] {memory.id}  [dim]{escape(_labels(memory))}[/]")
    else:
        out.print(f"[yellow]already known[/] {memory.id}  [dim](identical content; not copied)[/]")
    if result.supersedes:
        out.print(f"  supersedes {result.supersedes} (same topic_key)")
    for near in result.near_duplicates:
        out.print(f"  [yellow]near-duplicate of[/] {near.id} (cosine {near.similarity:.2f})")


def hits(results: list[Hit]) -> None:
    if not results:
        err.print("no memories matched")
        return
    for rank, hit in enumerate(results, 1):
        memory = hit.memory
        out.print(f"[bold]{rank}.[/] [cyan]{hit.score:.4f}[/]  [dim]{escape(_labels(memory))}[/]")
        out.print(f"   {escape(_preview(memory.content))}")
        out.print(f"   [dim]{memory.id} · {escape(hit.match.explain())}[/]")


def memories(items: list[Memory], total: int) -> None:
    if not items:
        err.print("no memories")
        return
    for m in items:
        created = iso(m.created_at)[:16].replace("T", " ")
        out.print(f"[dim]{m.id}  {created}  {escape(_labels(m))}[/]")
        out.print(f"   {escape(_preview(m.content))}")
    if total > len(items):
        err.print(f"{len(items)} of {total} shown; use --limit/--offset for more")


INCOMING = {
    "supersedes": "superseded by",
    "duplicate_of": "duplicated by",
    "relates_to": "related from",
    "contradicts": "contradicted by",
}
"""How a relation reads from the memory it points at (``A supersedes B``: B is superseded by A)."""


def memory(item: Memory, relations: list[Relation]) -> None:
    out.print(
        f"[bold]{item.id}[/]" + ("  [yellow]forgotten[/] (a tombstone)" if item.deleted else "")
    )
    for key, value in (
        ("kind", item.kind),
        ("project", item.project),
        ("tags", ", ".join(item.tags) or "-"),
        ("topic_key", item.topic_key or "-"),
        ("source", item.source),
        ("created", iso(item.created_at)),
        ("updated", iso(item.updated_at)),
        ("model", item.model_id or "-"),
    ):
        out.print(f"  [dim]{key:<10}[/] {escape(value)}")
    for rel in relations:
        if rel.from_id == item.id:
            label, other = rel.type, rel.to_id
        else:
            label, other = INCOMING.get(rel.type, f"{rel.type} from"), rel.from_id
        out.print(f"  [dim]{label:<10}[/] {other}")
    if item.deleted:
        out.print("\nits text, tags and vector were erased when it was forgotten")
        return
    out.print()
    out.print(escape(item.content))


def mapping(data: dict[str, Any]) -> None:
    for key, value in data.items():
        if isinstance(value, dict):
            out.print(f"[dim]{key}[/]")
            for k, v in value.items():
                out.print(f"  {escape(str(k)):<28} {v}")
        else:
            out.print(f"[dim]{key:<16}[/] {escape(str(value))}")


def repaired(report: dict[str, Any]) -> None:
    """What `cairn repair` found and did."""
    if report["status"] == "healthy":
        out.print(
            f"{escape(report['path'])} passed the integrity check; nothing to repair "
            "(--force rebuilds it anyway)"
        )
        return
    out.print(f"[green]repaired[/] {escape(report['path'])}")
    for problem in report["problems"][:3]:
        out.print(f"  [dim]found:[/] {escape(problem)}")
    out.print(f"  damaged file kept as {escape(report['damaged_copy'])}")
    out.print(
        f"  memories recovered {report['memories_recovered']}, lost {report['memories_lost']}; "
        f"relations recovered {report['relations_recovered']}, lost {report['relations_lost']}; "
        f"rows lost in all {report['rows_lost']}"
    )
    if report["re_embedded"]:
        out.print(f"  embedded again (their vectors were lost): {report['re_embedded']}")
    back = report["pulled_back"]
    if report["pull"] is not None:
        out.print(
            f"  pulled back from the remote: {back['memories']} memories, "
            f"{back['relations']} relations"
        )
    elif report["pull_error"] is not None:
        err.print(
            f"[yellow]could not pull from the remote:[/] {escape(report['pull_error']['message'])}"
            "; the next `cairn sync pull` brings back what the damage took"
        )
    if report["topic_links"]:
        out.print(f"  topic links made again: {report['topic_links']}")
    out.print(f"  memories now {report['memories_now']}")
