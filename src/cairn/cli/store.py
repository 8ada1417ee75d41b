"""The store commands: its stats, and repairing it when it is damaged."""

from __future__ import annotations

from typing import Annotated

import typer

from cairn import config, wiring
from cairn.cli import output
from cairn.cli.common import JsonFlag, open_store, progress_to


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
