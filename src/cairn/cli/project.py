"""`cairn project`: the projects a store holds, and renaming one (the rename syncs)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from cairn import config
from cairn.cli import output
from cairn.cli.common import App, JsonFlag, open_store

project_app = App(
    name="project",
    help="The projects memories belong to (by default, the git repository you are in).",
    no_args_is_help=True,
)


@project_app.command("list")
def list_(json_: JsonFlag = False) -> None:
    """Each project with live memories and how many, and the project of this folder."""
    with open_store() as store:
        counts = store.projects()
        here = store.project
    if json_:
        output.emit_json([{"project": name, "memories": n} for name, n in counts.items()])
        return
    for name, count in counts.items():
        mark = "  (this folder's)" if name == here else ""
        output.out.print(f"{escape(name)}  {count}{mark}")
    if here not in counts:
        output.err.print(f"this folder's project is {here!r} (no memories yet)")


@project_app.command()
def rename(
    old: Annotated[str, typer.Argument(metavar="OLD", help="The project's current name.")],
    new: Annotated[str, typer.Argument(metavar="NEW", help="Its new name.")],
    json_: JsonFlag = False,
) -> None:
    """Move every memory of project OLD to NEW: a change that syncs to every device. Topic
    chains join, and a memory NEW already holds word for word is merged into it. Update any
    include_projects / exclude_projects rules in config.toml yourself."""
    with open_store() as store:
        report = store.rename_project(old, new)
    if json_:
        output.emit_json(report)
        return
    output.out.print(
        f"[green]renamed[/] {escape(report['from'])} to {escape(report['to'])}: "
        f"{output.plural(report['renamed'], 'memory', 'memories')} moved"
        + (
            f", {output.plural(report['duplicates_merged'], 'duplicate')} merged"
            if report["duplicates_merged"]
            else ""
        )
        + "; run `cairn sync now` (or let autosync) to move them on your other devices"
    )
    rules = config.load().sync.rules
    if old in (*rules.include_projects, *rules.exclude_projects):
        output.err.print(
            f"[yellow]config.toml's [sync] rules still name {old!r}[/]; rename it there too"
        )
