"""The admin console's memory pages of a hosted workspace: browse, search (the hosted recall),
forget. An end-to-end workspace's page says instead that the server cannot read its memories."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import RedirectResponse, Response

from cairn.memory_rules import MAX_OFFSET
from cairn.model import Filters, Hit, Memory
from cairn.protocol import HOSTED
from cairn.server.console.pages import Ctx, Page, open_workspace, render, workspace_url
from cairn.server.console.workspace import Name
from cairn.server.context import now_ms

router = APIRouter()

PAGE = 25
"""Memories a page lists, and hits a search shows."""


@router.get("/w/{name}/memories")
def memories_page(
    request: Request,
    ctx: Ctx,
    session: Page,
    name: Name,
    q: Annotated[str, Query(max_length=1000)] = "",
    project: Annotated[str, Query(max_length=200)] = "",
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Response:
    workspace = open_workspace(ctx, session, name)
    found: list[Memory] = []
    total = 0
    hits: list[Hit] | None = None
    if workspace.mode == HOSTED:  # an end-to-end workspace's page says why it lists nothing
        filters = Filters.parse(project or None, [], [], None, None)
        if q.strip():
            hits = ctx.hosted.recall(workspace.id, session.key.id, q, filters, PAGE, now_ms())
        else:
            found, total = ctx.hosted.list(workspace.id, filters, PAGE, offset)
    return render(
        request,
        "console/memories.html",
        session,
        workspace=workspace,
        title=f"Memories of {workspace.name}",
        memories=found,
        total=total,
        hits=hits,
        q=q,
        project=project,
        offset=offset,
        limit=PAGE,
        query=urlencode({"project": project}) + "&" if project else "",
    )


@router.post("/w/{name}/memories/{memory_id}/forget")
def forget(
    ctx: Ctx,
    session: Page,
    name: Name,
    memory_id: Annotated[str, Path(max_length=100)],
) -> Response:
    workspace = open_workspace(ctx, session, name)
    ctx.hosted.require(workspace)
    ctx.hosted.forget(workspace.id, session.key.id, memory_id, now_ms())
    ctx.notifier.notify(workspace.id)
    return RedirectResponse(workspace_url(workspace, "memories"), 303)
