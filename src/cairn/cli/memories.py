"""The memory commands: remember, recall, list, show, edit and forget."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from cairn import model, views
from cairn.cli import output
from cairn.cli.common import (
    JsonFlag,
    KindOpt,
    ProjectOpt,
    SinceOpt,
    TagOpt,
    UntilOpt,
    open_store,
    parse_filters,
    split,
)
from cairn.device_store import Store


def _hint_projects(store: Store, project: str | None) -> None:
    """When a --project filter found nothing, say so if no such project exists (a typo)."""
    known = store.projects()
    if project is None or project in known:
        return
    names = ", ".join(sorted(known)) or "none yet"
    output.err.print(
        f"no project is called {project!r}; the projects here: {names} (`cairn project list`)"
    )


def remember(
    content: Annotated[str, typer.Argument(help="What to remember; `-` reads standard input.")],
    kind: Annotated[
        str,
        typer.Option(
            "--kind", "-k", help=f"Kind of memory: {', '.join(model.KINDS)} (or your own word)."
        ),
    ] = model.DEFAULT_KIND,
    project: Annotated[
        str | None,
        typer.Option("--project", "-p", help="Project (default: this git repository's name)."),
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", "-t", help="Tag (repeatable, or comma-separated).")
    ] = None,
    topic: Annotated[
        str | None,
        typer.Option(
            "--topic", help="Topic key: a new memory on the same topic supersedes the old."
        ),
    ] = None,
    json_: JsonFlag = False,
) -> None:
    """Remember a piece of knowledge: a decision, fact, preference, gotcha or note."""
    text = sys.stdin.read() if content == "-" else content
    with open_store(project) as store:
        result = store.remember(text, kind=kind, tags=split(tag), topic_key=topic)
    if json_:
        output.emit_json(result.to_dict())
    else:
        output.remembered(result)


def recall(
    query: Annotated[str, typer.Argument(help="What you are looking for, in your own words.")],
    project: ProjectOpt = None,
    kind: KindOpt = None,
    tag: TagOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many results.")] = 10,
    json_: JsonFlag = False,
) -> None:
    """Find memories by meaning and by keyword (hybrid search), best first."""
    filters = parse_filters(project, kind, tag, since, until)
    with open_store() as store:
        results = store.recall(query, filters, limit)
        if not results:
            _hint_projects(store, filters.project)
    if json_:
        output.emit_json([h.to_dict() for h in results])
    else:
        output.hits(results)


def list_(
    project: ProjectOpt = None,
    kind: KindOpt = None,
    tag: TagOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many memories.")] = 50,
    offset: Annotated[int, typer.Option(help="Skip this many (for paging).")] = 0,
    json_: JsonFlag = False,
) -> None:
    """List memories, newest first."""
    filters = parse_filters(project, kind, tag, since, until)
    with open_store() as store:
        items = store.list(filters, limit, offset)
        total = store.count(filters)
        if not total:
            _hint_projects(store, filters.project)
    if json_:
        output.emit_json({"total": total, "memories": [m.to_dict() for m in items]})
    else:
        output.memories(items, total)


def show(
    memory_id: Annotated[
        str, typer.Argument(metavar="ID", help="Memory id (or a unique prefix of 8+ characters).")
    ],
    json_: JsonFlag = False,
) -> None:
    """Show one memory in full, with its relations (a forgotten one: its tombstone)."""
    with open_store() as store:
        item = store.get(memory_id, include_forgotten=True)
        relations = store.relations(item.id)
    if json_:
        output.emit_json(views.detail(item, relations))
    else:
        output.memory(item, relations)


def edit(
    memory_id: Annotated[
        str, typer.Argument(metavar="ID", help="The memory's id (or a unique 8+ prefix).")
    ],
    content: Annotated[
        str | None,
        typer.Argument(metavar="TEXT", help="The new content; `-` reads standard input."),
    ] = None,
    kind: Annotated[str | None, typer.Option("--kind", "-k", help="A new kind.")] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", "-t", help="A tag to add (repeatable or a,b; tags only grow)."),
    ] = None,
    json_: JsonFlag = False,
) -> None:
    """Change a memory's content (embedded again) or kind, or add tags; the change syncs."""
    text = sys.stdin.read() if content == "-" else content
    with open_store() as store:
        memory = store.edit(memory_id, content=text, kind=kind, tags=split(tag))
    if json_:
        output.emit_json(memory.to_dict())
    else:
        output.out.print(f"[green]edited[/] {memory.id}")


def forget(
    memory_id: Annotated[
        str, typer.Argument(metavar="ID", help="Memory id (or a unique prefix of 8+ characters).")
    ],
    json_: JsonFlag = False,
) -> None:
    """Forget a memory: its text, tags and vector are erased (a tombstone keeps the id).
    Forgetting it again changes nothing."""
    with open_store() as store:
        already = store.get(memory_id, include_forgotten=True).deleted
        gone = store.forget(memory_id)
    if json_:
        output.emit_json(gone.to_dict())
    else:
        output.out.print(f"{'already forgotten' if already else 'forgot'} {gone.id}")
