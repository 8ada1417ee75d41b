"""`cairn server workspace set-retention` and `compact`: keeping a workspace's log from growing."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cairn.cli import output
from cairn.cli.common import JsonFlag
from cairn.cli.server_options import DataOpt, DbOpt, now_ms, open_storage
from cairn.errors import InvalidInput
from cairn.server.storage.retention import MAX_ACTIVE_DAYS

ActiveDays = Annotated[
    int | None,
    typer.Option(
        min=1,
        max=MAX_ACTIVE_DAYS,
        help="Days a device stays an active reader after its last pull: compaction waits for "
        "every active reader to have read a change before dropping it.",
    ),
]


def workspace_set_retention(
    name: Annotated[str, typer.Argument(help="The workspace's name.")],
    active_days: ActiveDays = None,
    off: Annotated[bool, typer.Option("--off", help="Turn retention off (the default).")] = False,
    data: DataOpt = None,
    db: DbOpt = None,
    json_: JsonFlag = False,
) -> None:
    """Set a workspace's retention policy (audited); with no option, show it. With a policy,
    the server compacts the log now and then (`cairn server run --compact-interval`): a change
    is dropped once the same device sent a later state of the same memory or relation and every
    active reader has read past it. Devices converge all the same, an inactive one included."""
    if off and active_days is not None:
        raise InvalidInput("--off turns retention off; give it without --active-days")
    storage = open_storage(data, db)
    try:
        workspace = storage.workspace(name)
        if off or active_days is not None:
            storage.set_retention(workspace.id, None if off else active_days)
            detail = {"active_days": None if off else active_days, "by": "cli"}
            storage.audit(workspace.id, None, "retention_set", detail, now_ms())
        days = storage.retention(workspace.id)
    finally:
        storage.close()
    if json_:
        output.emit_json({"workspace": name, "retention": days is not None, "active_days": days})
        return
    output.out.print(
        f"workspace {name}: retention off (the log keeps every change)"
        if days is None
        else f"workspace {name}: retention on; a device is an active reader for {days} days "
        "after its last pull"
    )


def workspace_compact(
    name: Annotated[str, typer.Argument(help="The workspace's name.")],
    active_days: ActiveDays = None,
    data: DataOpt = None,
    db: DbOpt = None,
    json_: JsonFlag = False,
) -> None:
    """Compact a workspace's log now (audited): drop each change the same device superseded
    with a later state, once every active reader has read past it. Uses the workspace's
    retention policy, or --active-days for this once."""
    storage = open_storage(data, db)
    try:
        workspace = storage.workspace(name)
        days = active_days if active_days is not None else storage.retention(workspace.id)
        if days is None:
            raise InvalidInput(
                f"workspace {name} has no retention policy; set one with `cairn server "
                f"workspace set-retention {name} --active-days N`, or give --active-days"
            )
        made = storage.compact(workspace.id, now_ms(), days, by="cli")
    finally:
        storage.close()
    result: dict[str, Any] = {"workspace": name, **vars(made)}
    if json_:
        output.emit_json(result)
        return
    output.out.print(
        f"workspace {name}: {made.removed} superseded changes dropped ({made.removed_bytes} "
        f"bytes); {made.mutations} changes kept ({made.stored_bytes} bytes); {made.readers} "
        f"active readers, all past seq {made.horizon}"
    )
