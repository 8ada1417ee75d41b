"""The sync server's admin console at ``/dashboard``: server-rendered pages for a workspace's admin.

Sign in with an admin API key (``auth``); a session sees its key's workspace (an operator's,
``--operator-workspace``, sees and creates every workspace): its keys, devices, activity, usage,
audit log and, for a hosted workspace, its memories (``workspaces``, ``workspace``, ``activity``,
``memories``). An end-to-end workspace's pages show only what the server holds: counts, sizes,
times and device names, never contents. The console is its own small app mounted in the
server's, with HTML error pages; its templates extend ``cairn.web``'s base page.
"""

from __future__ import annotations

import logging

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException

from cairn import http_edge
from cairn.errors import CairnError, StoreError
from cairn.server.console import activity, auth, memories, workspace, workspaces
from cairn.server.console.pages import SignInFirst, binding, render
from cairn.server.console.session import PATH, Sessions
from cairn.server.context import ServerContext
from cairn.web import csrf, templating

__all__ = ["PATH", "console_app"]

_log = logging.getLogger("cairn.server")


def console_app(context: ServerContext) -> FastAPI:
    """The console over the server's ``context``, to mount at ``PATH``."""
    settings = context.settings
    tokens = csrf.CsrfTokens(settings.console_secret.encode(), settings.console_session)
    app = FastAPI(
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(csrf.guard(tokens, binding))],
        exception_handlers={
            SignInFirst: _to_sign_in,
            CairnError: _on_error,
            RequestValidationError: _on_invalid,
            HTTPException: _on_http_error,
        },
    )
    app.state.cairn = context
    app.state.sessions = Sessions(settings.console_secret, settings.console_session)
    app.state.csrf = tokens
    app.state.templates = templating.environment("cairn.server.console")
    for group in (auth, workspaces, workspace, activity, memories):
        app.include_router(group.router)
    return app


async def _to_sign_in(request: Request, exc: Exception) -> Response:
    return RedirectResponse(f"{PATH}/sign-in", 303)


def _error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return render(request, "console/error.html", None, status, title="Error", problem=message)


async def _on_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CairnError)
    if isinstance(exc, StoreError):  # its details (database URL, file) stay in the log
        _log.error("%s %s: %s", request.method, request.url.path, exc.message)
        return _error_page(request, 503, "the server's database failed; try again in a moment")
    return _error_page(request, exc.http_status, exc.message)


async def _on_invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return _error_page(request, 422, http_edge.describe(exc.errors()))


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error_page(request, exc.status_code, f"{request.url.path}: {exc.detail}")
