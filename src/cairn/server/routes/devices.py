"""The sync server's device routes: register (or rename), list and remove a workspace's devices."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path

from cairn import http_edge
from cairn.model import iso
from cairn.protocol import ID_PATTERN
from cairn.server.context import now_ms
from cairn.server.routes.common import BODY, KEYED, Context, Reader, Writer, links, new_router
from cairn.server.schemas import DeviceIn, DeviceOut, DeviceRemovedOut, DevicesOut
from cairn.server.storage import Device

router = new_router()


@router.post(
    "/v1/devices",
    response_model=DeviceOut,
    tags=["devices"],
    summary="Register (or rename) a device",
    responses={
        200: links(
            PushAsIt=("push", {"header.X-Cairn-Device": "$response.body#/device_id"}),
            PullAsIt=("pull", {"header.X-Cairn-Device": "$response.body#/device_id"}),
        ),
        **KEYED,
        **BODY,
    },
)
def register_device(body: DeviceIn, ctx: Context, key: Writer) -> dict[str, str]:
    ctx.storage.register_device(key.workspace_id, body.device_id, body.name, now_ms())
    detail = {"device": body.device_id}
    ctx.storage.audit(key.workspace_id, key.id, "device_register", detail, now_ms())
    return {"device_id": body.device_id, "name": body.name}


@router.delete(
    "/v1/devices/{device_id}",
    response_model=DeviceRemovedOut,
    tags=["devices"],
    summary="Remove a device: it leaves the workspace (what it pushed stays)",
    description=(
        "For a device that is done for good, such as an ephemeral CI device at its end: its "
        "record goes (name, last seen, read position), its mutations stay in the log. A device "
        "that syncs again is recorded again."
    ),
    responses={**KEYED, **http_edge.errors(422)},
)
def remove_device(
    device_id: Annotated[str, Path(pattern=ID_PATTERN)], ctx: Context, key: Writer
) -> dict[str, Any]:
    ctx.seen.forget_device(key.workspace_id, device_id)  # a pending sighting would re-add it
    removed = ctx.storage.remove_device(key.workspace_id, device_id)
    if removed:
        detail = {"device": device_id}
        ctx.storage.audit(key.workspace_id, key.id, "device_remove", detail, now_ms())
    return {"device_id": device_id, "removed": removed}


@router.get(
    "/v1/devices",
    response_model=DevicesOut,
    tags=["devices"],
    summary="The workspace's devices",
    responses=KEYED,
)
def list_devices(ctx: Context, key: Reader) -> dict[str, list[dict[str, Any]]]:
    return {"devices": [_device(d) for d in ctx.storage.devices(key.workspace_id)]}


def _device(device: Device) -> dict[str, Any]:
    return {
        "device_id": device.device_id,
        "name": device.name,
        "first_seen": iso(device.first_seen),
        "last_seen": iso(device.last_seen),
        "pushed": device.pushed,
        "last_push_at": _iso(device.last_push_at),
        "last_pull_at": _iso(device.last_pull_at),
    }


def _iso(ms: int | None) -> str | None:
    return None if ms is None else iso(ms)
