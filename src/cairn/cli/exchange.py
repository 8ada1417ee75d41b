"""The exchange commands: export memories to JSON Lines and import them back."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

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
    progress,
)
from cairn.device_store import Store
from cairn.errors import InvalidInput
from cairn.interchange import jsonl

PREPARE_AFTER = 2_000
"""Memories an import adds from which it builds and saves the vector index before it ends:
otherwise the next recall would train it (minutes at a million memories)."""


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
    filters = parse_filters(project, kind, tag, since, until)
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
        ready = _prepare_index(store) if report.imported >= PREPARE_AFTER else None
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
        if ready is not None:
            output.err.print(f"the vector index is built and saved for recall ({ready:.1f} s)")
    if report.errors:
        raise typer.Exit(code=InvalidInput.exit_code)


def _prepare_index(store: Store) -> float | None:
    """Build (or catch up) and save the store's vector index; its seconds, or None when the
    store is small enough to be scanned exactly (nothing is saved then)."""
    started = time.perf_counter()
    with progress("building the vector index for recall", None):
        saved = store.index.prepare()
    return time.perf_counter() - started if saved else None
