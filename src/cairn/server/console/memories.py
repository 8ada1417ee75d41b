"""The admin console's memory pages of a hosted workspace: browse, search (the hosted recall),
forget. An end-to-end workspace's page says instead that the server cannot read its memories."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import RedirectResponse, Response

from cairn.model import Filters, Hit, Memory
from cairn.protocol import HOSTED
from cairn.server.console.pages import Ctx, Page, open_workspace, render, workspace_url
from cairn.server.console.workspace import Name
from cairn.server.context import now_ms

router = APIRouter()

PAGE = 25
"""Memories a page lists, and hits a search shows."""
BEFORE = re.compile(r"^([0-9]{1,16})\.([0-9A-Za-z-]{1,64})$")
"""A page's ``before``: the creation time and id of the last memory of the page above it."""


@router.get("/w/{name}/memories")
def memories_page(
    request: Request,
    ctx: Ctx,
    session: Page,
    name: Name,
    q: Annotated[str, Query(max_length=1000)] = "",
    project: Annotated[str, Query(max_length=200)] = "",
    before: Annotated[str, Query(pattern=BEFORE.pattern)] = "",
) -> Response:
    workspace = open_workspace(ctx, session, name)
    found: list[Memory] = []
    hits: list[Hit] | None = None
    older = None
    if workspace.mode == HOSTED:  # an end-to-end workspace's page says why it lists nothing
        filters = Filters.parse(project or None, [], [], None, None)
        if q.strip():
            hits = ctx.hosted.recall(workspace.id, session.key.id, q, filters, PAGE, now_ms())
        else:
            ctx.hosted.fold(workspace.id)
            after = BEFORE.fullmatch(before)
            cursor = (int(after[1]), after[2]) if after else None
            found = ctx.storage.older_indexed(workspace.id, filters, PAGE + 1, cursor)
            if len(found) > PAGE:
                found = found[:PAGE]
                older = f"{found[-1].created_at}.{found[-1].id}"
    return render(
        request,
        "console/memories.html",
        session,
        workspace=workspace,
        title=f"Memories of {workspace.name}",
        memories=found,
        hits=hits,
        q=q,
        project=project,
        before=before,
        older=older,
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
