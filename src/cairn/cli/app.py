"""`cairn`: remember, recall and manage memories from the shell.

This is the CLI's composition root: it reads the configuration and wires the store; errors map
to exit codes through each error class's ``exit_code`` (see ``cairn.errors``).
"""

from __future__ import annotations

import dataclasses
import io
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

import cairn
from cairn import config, model, wiring
from cairn.cli import output
from cairn.cli.common import (
    App,
    JsonFlag,
    open_store,
    progress,
    progress_to,
    split,
    until_stopped,
)
from cairn.cli.doctor import doctor
from cairn.cli.project import project_app
from cairn.cli.server import server_app
from cairn.cli.sync import sync_app
from cairn.device_store import Store
from cairn.errors import CairnError, InvalidInput
from cairn.interchange import jsonl
from cairn.model import Filters

app = App(
    name="cairn",
    help="Long-term memory for AI coding agents: remember and recall knowledge, offline.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(doctor)
app.add_typer(project_app)
app.add_typer(server_app)
app.add_typer(sync_app)

ProjectOpt = Annotated[
    str | None, typer.Option("--project", "-p", help="Only memories of this project.")
]
KindOpt = Annotated[
    list[str] | None, typer.Option("--kind", "-k", help="Only this kind (repeatable).")
]
TagOpt = Annotated[
    list[str] | None,
    typer.Option("--tag", "-t", help="Only memories with this tag (repeatable; all must match)."),
]
SinceOpt = Annotated[
    str | None, typer.Option(help="Only memories created since (ISO date, or an age: 7d, 12h).")
]
UntilOpt = Annotated[str | None, typer.Option(help="Only memories created before (ISO or age).")]


def _filters(
    project: str | None,
    kind: list[str] | None,
    tag: list[str] | None,
    since: str | None,
    until: str | None,
) -> Filters:
    return Filters.parse(project, split(kind), split(tag), since, until)


def _hint_projects(store: Store, project: str | None) -> None:
    """When a --project filter found nothing, say so if no such project exists (a typo)."""
    known = store.projects()
    if project is None or project in known:
        return
    names = ", ".join(sorted(known)) or "none yet"
    output.err.print(
        f"no project is called {project!r}; the projects here: {names} (`cairn project list`)"
    )


@app.command()
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


@app.command()
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
    filters = _filters(project, kind, tag, since, until)
    with open_store() as store:
        results = store.recall(query, filters, limit)
        if not results:
            _hint_projects(store, filters.project)
    if json_:
        output.emit_json([h.to_dict() for h in results])
    else:
        output.hits(results)


@app.command("list")
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
    filters = _filters(project, kind, tag, since, until)
    with open_store() as store:
        items = store.list(filters, limit, offset)
        total = store.count(filters)
        if not total:
            _hint_projects(store, filters.project)
    if json_:
        output.emit_json({"total": total, "memories": [m.to_dict() for m in items]})
    else:
        output.memories(items, total)


@app.command()
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
        output.emit_json({**item.to_dict(), "relations": [r.to_dict() for r in relations]})
    else:
        output.memory(item, relations)


@app.command()
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


@app.command()
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


@app.command()
def export(
    file: Annotated[
        Path, typer.Argument(help="JSONL file to write; `-` writes standard output.")
    ] = Path("-"),
    project: ProjectOpt = None,
    kind: KindOpt = None,
    tag: TagOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    json_: JsonFlag = False,
) -> None:
    """Export memories (with their embeddings) and relations as JSON Lines."""
    filters = _filters(project, kind, tag, since, until)
    with open_store() as store:
        total = store.count(filters)
        with progress("exporting", total) as bar:
            if str(file) == "-":
                count = jsonl.export(store, sys.stdout, filters, bar)
            else:
                partial = file.with_name(file.name + ".partial")
                with partial.open("w", encoding="utf-8") as fh:
                    count = jsonl.export(store, fh, filters, bar)
                partial.replace(file)  # a reader never sees a half-written export
    summary = {"exported": count, "file": str(file)}
    if json_:
        output.emit_json(summary)
    elif str(file) != "-":
        output.err.print(f"exported {count} memories to {file}")


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="JSONL file from `cairn export`; `-` reads stdin.")],
    json_: JsonFlag = False,
) -> None:
    """Import memories from JSON Lines; bad lines are reported by number and skipped.

    Re-importing the same file changes nothing. Embeddings made by the same model are reused.
    """
    if str(file) != "-" and not file.is_file():
        raise InvalidInput(f"{file} does not exist or is not a file")
    # Bytes that are not UTF-8 are read as lone surrogates, so the import refuses only the lines
    # that hold them (by number) instead of the whole file failing part-way.
    with open_store() as store:
        if str(file) == "-":
            stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape")
            report = jsonl.import_(store, stdin)
        else:
            with file.open(encoding="utf-8", errors="surrogateescape") as fh:
                total = sum(1 for _ in fh)
            with (
                file.open(encoding="utf-8", errors="surrogateescape") as fh,
                progress("importing", total) as bar,
            ):
                report = jsonl.import_(store, fh, bar)
    if json_:
        output.emit_json(report.to_dict())
    else:
        output.err.print(
            f"imported {report.imported}, unchanged {report.unchanged}, "
            f"duplicates {report.duplicates}, relations {report.relations}, "
            f"embedded {report.embedded}, bad lines {len(report.errors)}"
        )
        for number, message in report.errors[:50]:
            output.err.print(f"  line {number}: {escape(message)}")
        if len(report.errors) > 50:
            output.err.print(f"  … and {len(report.errors) - 50} more (use --json for all)")
    if report.errors:
        raise typer.Exit(code=InvalidInput.exit_code)


@app.command()
def stats(json_: JsonFlag = False) -> None:
    """Counts by kind and project, store size, model, and where sync stands: the remote and
    the changes waiting to be sent, or `off` before `cairn sync setup`."""
    settings = config.load()
    with open_store() as store:
        data = store.stats()
    data["sync"] = settings.sync.remote if wiring.sync_configured(settings) else "off"
    if json_:
        output.emit_json(data)
        return
    if data["sync"] == "off":  # nothing is waiting for a remote: changes are only kept here
        pending = data.pop("outbox_pending")
        kept = f" ({output.plural(pending, 'change')} kept on this device until `cairn sync setup`)"
        data["sync"] = "off" + (kept if pending else "")
    output.mapping(data)


@app.command()
def repair(
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Rebuild the store even when the integrity check finds nothing wrong."
        ),
    ] = False,
    pull: Annotated[
        bool,
        typer.Option(
            "--pull/--no-pull",
            help="When sync is set up, pull what the damage took back from the remote (on by "
            "default; with --no-pull the next sync does it).",
        ),
    ] = True,
    json_: JsonFlag = False,
) -> None:
    """Repair a damaged store: check its integrity, copy every row that can still be read into
    a new store (keyword index and vectors rebuilt), keep the damaged file aside as
    cairn.db.damaged-<time>, and pull the rest back from the remote when sync is set up.

    A healthy store is left alone. Stop agents (`cairn mcp`) and `cairn serve` using the store
    before repairing it, and start them again after.
    """
    with progress_to("pulling") as bar:
        report = wiring.repair_store(config.load(), force=force, pull=pull, progress=bar)
    if json_:
        output.emit_json(report)
    else:
        output.repaired(report)


AutosyncFlag = Annotated[
    bool,
    typer.Option(
        "--autosync/--no-autosync",
        help="Sync the store in the background while this runs (once `cairn sync setup` has "
        "run; only one process per store syncs at a time).",
    ),
]


@app.command()
def mcp(autosync: AutosyncFlag = True) -> None:
    """Run the MCP server on stdio (configure your agent to start `cairn mcp`)."""
    # Imported here: the MCP SDK is slow to import and only this command needs it.
    from cairn import mcp_server

    with until_stopped():
        mcp_server.run(config.load(source="mcp"), autosync)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind (local only by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7777,
    token: Annotated[
        str | None,
        typer.Option(
            help="Require `Authorization: Bearer TOKEN` on every request (needed for a --host "
            "beyond this machine); CAIRN_LOCAL_TOKEN keeps it out of the process list."
        ),
    ] = None,
    autosync: AutosyncFlag = True,
) -> None:
    """Serve the local HTTP API (OpenAPI docs at /docs)."""
    # Imported here: FastAPI and uvicorn are slow to import and only this command needs them.
    from cairn import api

    settings = config.load(source="http")
    if token:
        settings = dataclasses.replace(settings, local_token=token)
    # uvicorn stops on SIGTERM, then raises it again: until_stopped makes that a clean exit.
    with until_stopped():
        api.run(settings, host, port, autosync, on_ready=output.announce)


def _version(value: bool) -> None:
    if value:
        output.out.print(f"cairn {cairn.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Long-term memory for AI coding agents: remember and recall knowledge, offline."""


def main() -> None:
    """Entry point: run the app and turn Cairn errors into a message and an exit code."""
    try:
        app()
    except CairnError as exc:
        if "--json" in sys.argv:
            output.emit_json({"error": exc.to_dict()})
        output.err.print(f"[red]error:[/] {escape(exc.message)}")
        sys.exit(exc.exit_code)
