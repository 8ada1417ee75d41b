"""`cairn sync conflicts`, `resolve` and `dead-letters`: what sync could not settle on its own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Annotated

import typer
from rich.markup import escape

from cairn import config, wiring
from cairn.cli import output
from cairn.cli.common import JsonFlag, open_store
from cairn.errors import InvalidInput
from cairn.model import iso
from cairn.sync.engine import Syncer


@contextmanager
def saved_syncer() -> Iterator[Syncer]:
    """A Syncer for this device's store, from the saved sync settings."""
    with open_store() as store, wiring.saved_syncer(config.load(), store) as syncer:
        yield syncer


def conflicts(json_: JsonFlag = False) -> None:
    """Memories whose text two devices changed at once: the text shown now and the other
    version kept beside it, with the device that wrote each."""
    settings = config.load()
    with saved_syncer() as syncer:
        found = syncer.conflicts()
        names = wiring.device_names(syncer, settings.sync.device_name) if found else {}
    if json_:
        output.emit_json(
            [
                c.to_dict()
                | {
                    "device_name": names.get(c.device_id),
                    "current_device_name": names.get(c.current_device_id),
                }
                for c in found
            ]
        )
        return
    if not found:
        output.out.print("no conflicts")
        return

    def writer(device: str) -> str:
        name = escape(names.get(device, device))
        return f"{name} (this device)" if device == syncer.device_id else name

    for c in found:
        output.out.print(f"[bold]{c.id}[/]  memory {c.memory_id}")
        output.out.print(f"  shown now, written by {writer(c.current_device_id)}:")
        output.out.print(f"    {escape(c.current)}")
        output.out.print(f"  other version, written by {writer(c.device_id)}:")
        output.out.print(f"    {escape(c.content)}")
    output.out.print(
        "settle one with `cairn sync resolve ID --keep current` (the text shown now), "
        "`--keep other` (the other version) or `--keep both` (the other version becomes a "
        "memory of its own)"
    )


KEEP = {"current": "local", "other": "remote", "both": "both", "local": "local", "remote": "remote"}
"""--keep choices, by what they keep (``local`` and ``remote``, their former names, still work),
to the sync engine's names."""


def resolve(
    conflict: Annotated[
        str, typer.Argument(metavar="ID", help="A conflict id, or the memory's id.")
    ],
    keep: Annotated[
        str,
        typer.Option(
            metavar="current|other|both",
            help="current: keep the text shown now; other: keep the other version; both: keep "
            "the text shown now and make the other version a memory of its own.",
        ),
    ],
    json_: JsonFlag = False,
) -> None:
    """Settle a conflict; the choice syncs to every device like any other change."""
    if keep not in KEEP:
        raise InvalidInput(f"--keep {keep!r}: choose current, other or both")
    with saved_syncer() as syncer:
        result = syncer.resolve(conflict, KEEP[keep])
    result["kept"] = {"local": "current", "remote": "other", "both": "both"}[result["kept"]]
    if json_:
        output.emit_json(result)
        return
    kept = {"current": "the text shown now", "other": "the other version", "both": "both"}
    output.out.print(f"[green]resolved[/] {result['conflict']}: kept {kept[result['kept']]}")
    if result["created"]:
        output.out.print(f"  the other version is now memory {result['created']}")


def dead_letters(
    retry: Annotated[
        bool, typer.Option("--retry", help="Queue the refused changes to be sent again.")
    ] = False,
    json_: JsonFlag = False,
) -> None:
    """Changes the remote refused (or pulled ones that could not be read), with the reason."""
    with saved_syncer() as syncer:
        letters = syncer.dead_letters()
        requeued = syncer.retry_dead_letters() if retry else 0
    if json_:
        output.emit_json(
            {
                "dead_letters": [asdict(d) | {"failed_at": iso(d.failed_at)} for d in letters],
                "requeued": requeued,
            }
        )
        return
    if not letters:
        output.out.print("no dead letters")
    for d in letters:
        output.out.print(
            f"{d.direction:4} {d.entity} {d.entity_id}  [red]{d.code}[/]: {escape(d.message)}"
        )
    if retry:
        output.out.print(
            f"{output.plural(requeued, 'change')} queued again"
            + ("; run `cairn sync push`" if requeued else "")
        )
