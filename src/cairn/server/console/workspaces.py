"""The admin console's server pages: the workspaces (create, quotas) and the server's health."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from cairn import __version__
from cairn.errors import Forbidden, InvalidInput
from cairn.model import MAX_INT
from cairn.protocol import E2E, MODES
from cairn.server import keys
from cairn.server.console.pages import Ctx, Page, open_workspace, render, workspace_url
from cairn.server.console.session import Session
from cairn.server.context import now_ms
from cairn.server.storage import Quota

router = APIRouter()


@router.get("/")
def workspaces_page(request: Request, ctx: Ctx, session: Page) -> Response:
    summaries = [s for s in ctx.storage.summaries() if session.may_open(s.workspace)]
    return render(request, "console/workspaces.html", session, title="Workspaces", rows=summaries)


@router.post("/workspaces")
def create_workspace(
    request: Request,
    ctx: Ctx,
    session: Page,
    name: Annotated[str, Form(max_length=64)],
    mode: Annotated[str, Form(max_length=10)] = E2E,
) -> Response:
    _operator(session)
    if mode not in MODES:
        raise InvalidInput(f"a workspace's mode is e2e or hosted, not {mode!r}")
    made, token = keys.create_workspace(ctx.storage, name.strip(), now_ms(), mode)
    detail = {"name": made.name, "mode": made.mode, "via": "console"}
    ctx.storage.audit(made.id, session.key.id, "workspace_create", detail, now_ms())
    rows = ctx.storage.summaries()
    return render(
        request,
        "console/workspaces.html",
        session,
        201,
        title="Workspaces",
        rows=rows,
        created=made,
        secret=token,
        notice=f"created {made.mode} workspace {made.name}; copy its admin key now",
    )


@router.post("/w/{name}/quota")
def set_quota(
    ctx: Ctx,
    session: Page,
    name: str,
    max_mutations: Annotated[str, Form(max_length=20)] = "",
    max_bytes: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    _operator(session)
    found = open_workspace(ctx, session, name)
    quota = Quota(_limit(max_mutations, "changes"), _limit(max_bytes, "bytes"))
    ctx.storage.set_quota(found.id, quota)
    detail = {"max_mutations": quota.max_mutations, "max_bytes": quota.max_bytes}
    ctx.storage.audit(found.id, session.key.id, "quota_set", detail, now_ms())
    return RedirectResponse(workspace_url(found), 303)


@router.get("/health")
def health_page(request: Request, ctx: Ctx, session: Page) -> Response:
    storage = ctx.storage
    facts = {
        "backend": type(storage).__name__.removesuffix("Storage"),
        "database": str(storage.path) if session.operator else None,
        "schema_version": storage.schema_version(),
        "workers": ctx.settings.workers,
        "version": __version__,
        "waiting_long_polls": ctx.notifier.waiting,
        "workspaces": storage.totals().workspaces if session.operator else None,
    }
    return render(request, "console/health.html", session, title="Health", facts=facts)


def _operator(session: Session) -> None:
    if not session.operator:
        raise Forbidden(
            "only admin keys of the server's operator workspace (`cairn server run "
            "--operator-workspace NAME`) create workspaces and set quotas; or use `cairn server "
            "workspace create` on the server"
        )


def _limit(text: str, what: str) -> int | None:
    """A quota field: blank for no limit, else a whole number from 1 to MAX_INT."""
    text = text.strip().replace("_", "").replace(",", "")
    if not text:
        return None
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_INT:
        raise InvalidInput(f"a limit on {what} is a whole number of at least 1, or blank for none")
    return int(text)
