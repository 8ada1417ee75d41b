"""The admin console's sign-in and sign-out: an admin API key in, a session cookie out.

A sign-in is authenticated like any API request (``ServerContext.failures``): a wrong key is
limited per client address and key id (then 429), and failures against an existing key go to
its workspace's audit log as ``auth_failed``. A valid key without the admin scope is refused
(403, audited as ``console_refused``); sign-ins and sign-outs are audited too. The sign-in
form's CSRF token is bound to a random cookie set with the form, so another site cannot sign a
browser in with a key of its choosing.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from cairn.errors import AuthFailed, RateLimited
from cairn.server import keys
from cairn.server.console.pages import FORM_COOKIE, Ctx, Page, render
from cairn.server.console.session import PATH, over_https
from cairn.server.context import now_ms

router = APIRouter()

_MAX_TOKEN = 300


@router.get("/sign-in")
def sign_in_page(request: Request, ctx: Ctx) -> Response:
    if request.app.state.sessions.read(request, ctx) is not None:
        return RedirectResponse(f"{PATH}/", 303)
    return _form(request)


@router.post("/sign-in")
def sign_in(
    request: Request, ctx: Ctx, key: Annotated[str, Form(max_length=_MAX_TOKEN)] = ""
) -> Response:
    host = request.client.host if request.client else None
    try:
        found = ctx.failures.authenticate(f"Bearer {key.strip()}", host)
    except RateLimited as exc:
        return _form(request, exc.message, 429)
    except AuthFailed:
        return _form(request, "that is not a valid API key of this server; check it", 401)
    if not keys.grants(found.scopes, "admin"):
        detail = {"scopes": list(found.scopes), "address": host}
        ctx.storage.audit(found.workspace_id, found.id, "console_refused", detail, now_ms())
        message = (
            f"key {found.id} has scope {', '.join(found.scopes)}; the admin console needs a key "
            "with the admin scope (`cairn server key create --scope admin`)"
        )
        return _form(request, message, 403)
    ctx.storage.audit(found.workspace_id, found.id, "console_sign_in", {"address": host}, now_ms())
    response = RedirectResponse(f"{PATH}/", 303)
    request.app.state.sessions.start(response, request, found.id)
    response.delete_cookie(FORM_COOKIE, path=PATH)
    return response


@router.post("/sign-out")
def sign_out(request: Request, ctx: Ctx, session: Page) -> Response:
    ctx.storage.audit(session.home.id, session.key.id, "console_sign_out", {}, now_ms())
    response = RedirectResponse(f"{PATH}/sign-in", 303)
    request.app.state.sessions.end(response, request)
    return response


def _form(request: Request, problem: str | None = None, status: int = 200) -> Response:
    """The sign-in page, with a new form cookie and a CSRF token bound to it."""
    value = secrets.token_urlsafe(32)
    response = render(
        request,
        "console/sign_in.html",
        None,
        status,
        csrf_binding=f"sign-in:{value}",
        title="Sign in",
        problem=problem,
    )
    response.set_cookie(
        FORM_COOKIE,
        value,
        max_age=3600,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=over_https(request),
    )
    return response
