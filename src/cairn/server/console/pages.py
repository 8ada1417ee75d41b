"""What every admin console page shares: the server context, who is signed in, CSRF, rendering.

A page's route takes ``Page`` (the signed-in ``Session``; without one the browser is sent to
the sign-in page) and answers ``render(...)``. Every form carries a ``cairn.web.csrf`` token
bound to the session (the sign-in form: to a cookie set with it), checked before any route
that changes something runs.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse

from cairn.errors import NotFound
from cairn.server.console.session import PATH, Session
from cairn.server.context import ServerContext
from cairn.server.storage import Workspace
from cairn.web import templating

FORM_COOKIE = "cairn_console_form"
"""The sign-in form's cookie: its CSRF token is bound to this value (double submit)."""
APP_NAME = "Cairn server"
_HEADERS = {"Referrer-Policy": "same-origin"}
"""With ``no-referrer`` a browser posts this page's forms with ``Origin: null``, which the CSRF
check must refuse; ``same-origin`` names the origin to this server and to no one else."""


class SignInFirst(Exception):
    """The request has no live session: the console answers with the sign-in page."""


def _context(request: Request) -> ServerContext:
    context: ServerContext = request.app.state.cairn
    return context


Ctx = Annotated[ServerContext, Depends(_context)]


def _signed_in(request: Request, ctx: Ctx) -> Session:
    session: Session | None = request.app.state.sessions.read(request, ctx)
    if session is None:
        raise SignInFirst
    return session


Page = Annotated[Session, Depends(_signed_in)]


def binding(request: Request) -> str:
    """What the request's CSRF token must be bound to: its session, or its sign-in form."""
    claims = request.app.state.sessions.claims(request)
    if claims is not None:
        return f"session:{claims[1]}"
    return f"sign-in:{request.cookies.get(FORM_COOKIE, '')[:100]}"


def open_workspace(ctx: ServerContext, session: Session, name: str) -> Workspace:
    """The workspace called ``name`` if this session may open it; NotFound otherwise (the same
    answer either way, so a session cannot learn which other workspaces exist)."""
    try:
        found: Workspace | None = ctx.storage.workspace(name)
    except NotFound:
        found = None
    if found is None or not session.may_open(found):
        raise NotFound(f"no workspace named {name!r} that this key may open")
    return found


def workspace_url(workspace: Workspace, page: str = "") -> str:
    return f"{PATH}/w/{quote(workspace.name, safe='')}/{page}"


def render(
    request: Request,
    template: str,
    session: Session | None,
    status: int = 200,
    *,
    workspace: Workspace | None = None,
    csrf_binding: str | None = None,
    **context: Any,
) -> HTMLResponse:
    """The page ``template`` with what the layout needs: the navigation (of ``workspace``
    when given), who is signed in, and a CSRF token for its forms."""
    state = request.app.state
    token = state.csrf.issue(csrf_binding if csrf_binding is not None else binding(request))
    nav = _nav(session, workspace)
    page = {
        "app_name": APP_NAME,
        "home": f"{PATH}/",
        "nav": nav,
        "active": request.url.path,
        "session": session,
        "workspace": workspace,
        "csrf_token": token,
        "base": PATH,
        **context,
    }
    return templating.render(state.templates, template, page, status, _HEADERS)


def _nav(session: Session | None, workspace: Workspace | None) -> list[tuple[str, str]]:
    if session is None:
        return []
    nav = [(f"{PATH}/", "Workspaces")]
    if workspace is not None:
        nav += [
            (workspace_url(workspace), "Overview"),
            (workspace_url(workspace, "keys"), "Keys"),
            (workspace_url(workspace, "devices"), "Devices"),
            (workspace_url(workspace, "activity"), "Activity"),
            (workspace_url(workspace, "audit"), "Audit"),
        ]
        if workspace.mode == "hosted":
            nav.append((workspace_url(workspace, "memories"), "Memories"))
    nav.append((f"{PATH}/health", "Health"))
    return nav
