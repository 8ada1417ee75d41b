"""The admin console's pages of one workspace: what the server holds of it, its keys, devices."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Path, Request
from fastapi.responses import RedirectResponse, Response

from cairn.server import keys
from cairn.server.console.pages import Ctx, Page, open_workspace, render, workspace_url
from cairn.server.context import now_ms
from cairn.server.schemas import KEY_ID_PATTERN
from cairn.server.storage import SCOPES

router = APIRouter()

Name = Annotated[str, Path(max_length=64)]


@router.get("/w/{name}/")
def overview(request: Request, ctx: Ctx, session: Page, name: Name) -> Response:
    workspace = open_workspace(ctx, session, name)
    summary = ctx.storage.summary(workspace.id)
    devices = ctx.storage.devices(workspace.id)
    pushes = [d.last_push_at for d in devices if d.last_push_at is not None]
    facts = {
        "keyring_versions": len(ctx.storage.keyring_versions(workspace.id, 1000)),
        "last_push_at": max(pushes, default=None),
        "index": ctx.storage.index_lag(workspace.id) if workspace.mode == "hosted" else None,
    }
    return render(
        request,
        "console/overview.html",
        session,
        workspace=workspace,
        title=workspace.name,
        summary=summary,
        devices=devices,
        facts=facts,
    )


@router.get("/w/{name}/keys")
def keys_page(request: Request, ctx: Ctx, session: Page, name: Name) -> Response:
    workspace = open_workspace(ctx, session, name)
    return _keys(request, ctx, session, workspace.name)


@router.post("/w/{name}/keys")
def create_key(
    request: Request,
    ctx: Ctx,
    session: Page,
    name: Name,
    key_name: Annotated[str, Form(max_length=200)],
    scope: Annotated[str, Form(max_length=10)],
) -> Response:
    workspace = open_workspace(ctx, session, name)
    made, token = keys.issue(ctx.storage, workspace.id, key_name, [scope], now_ms())
    detail = {"created": made.id, "name": made.name, "scopes": list(made.scopes), "via": "console"}
    ctx.storage.audit(workspace.id, session.key.id, "key_create", detail, now_ms())
    return _keys(request, ctx, session, name, 201, created=made.id, secret=token)


@router.post("/w/{name}/keys/{key_id}/revoke")
def revoke_key(
    ctx: Ctx,
    session: Page,
    name: Name,
    key_id: Annotated[str, Path(pattern=KEY_ID_PATTERN)],
) -> Response:
    workspace = open_workspace(ctx, session, name)
    ctx.storage.revoke_key(workspace.id, key_id, now_ms())
    ctx.key_revoked(key_id)  # refused at once here, and in the other processes on their news
    detail = {"revoked": key_id, "via": "console"}
    ctx.storage.audit(workspace.id, session.key.id, "key_revoke", detail, now_ms())
    return RedirectResponse(workspace_url(workspace, "keys"), 303)


@router.get("/w/{name}/devices")
def devices_page(request: Request, ctx: Ctx, session: Page, name: Name) -> Response:
    workspace = open_workspace(ctx, session, name)
    head = ctx.storage.latest_seq(workspace.id)
    devices = ctx.storage.devices(workspace.id)
    rows = [
        (d, None if d.read_position is None else max(head - d.read_position, 0)) for d in devices
    ]
    return render(
        request,
        "console/devices.html",
        session,
        workspace=workspace,
        title=f"Devices of {workspace.name}",
        head=head,
        rows=rows,
    )


def _keys(
    request: Request,
    ctx: Ctx,
    session: Page,
    name: str,
    status: int = 200,
    created: str | None = None,
    secret: str | None = None,
) -> Response:
    workspace = open_workspace(ctx, session, name)
    return render(
        request,
        "console/keys.html",
        session,
        status,
        workspace=workspace,
        title=f"API keys of {workspace.name}",
        keys=ctx.storage.keys(workspace.id),
        scopes=SCOPES,
        created=created,
        secret=secret,
        notice="key created: copy it now, it is not shown again" if secret else None,
    )
