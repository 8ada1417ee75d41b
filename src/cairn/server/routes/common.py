"""What every route of the sync server shares: its router, the caller's key, errors and links.

Every route but /healthz and /metrics authenticates an API key and works inside that key's
workspace only; the workspace comes from the key, never from the request.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Security

from cairn import http_edge
from cairn.server import keys
from cairn.server.context import ServerContext, now_ms
from cairn.server.storage import ApiKey


def new_router() -> APIRouter:
    """A router whose operation ids are the endpoints' names (push, pull, create_key, ...):
    the OpenAPI links use them."""
    return APIRouter(route_class=http_edge.JsonRoute, generate_unique_id_function=lambda r: r.name)


def links(**named: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """OpenAPI links: what a client (or a stateful fuzzer) may do next with this answer, as
    name=(operation id, its parameters as runtime expressions)."""
    out = {}
    for name, (operation, parameters) in named.items():
        body = parameters.pop("body", None)
        out[name] = {"operationId": operation, "parameters": parameters}
        if body is not None:
            out[name]["requestBody"] = body
    return {"links": out}


_BEARER = http_edge.BearerKey("An API key of the workspace: `cairn server key create` makes one.")

# Every route that takes a key answers these; the rest are listed route by route.
KEYED = http_edge.errors(401, 403, 429)
BODY = http_edge.errors(413, 422)


def _context(request: Request) -> ServerContext:
    context: ServerContext = request.app.state.cairn
    return context


Context = Annotated[ServerContext, Depends(_context)]


def _caller(
    request: Request, ctx: Context, authorization: Annotated[str | None, Security(_BEARER)]
) -> ApiKey:
    """The request's API key, authenticated and within its rate limit (failed attempts are
    limited per client address and key id: ``cairn.server.failures``)."""
    key = ctx.failures.authenticate(authorization, request.client.host if request.client else None)
    ctx.limiter.check(key.id)
    ctx.seen.key_used(key.workspace_id, key.id, now_ms())
    return key


class _Needs:
    """A dependency: the caller's key, if it has the ``needed`` scope (else 403)."""

    def __init__(self, needed: str) -> None:
        self.needed = needed

    def __call__(self, key: Annotated[ApiKey, Depends(_caller)]) -> ApiKey:
        keys.require(key, self.needed)
        return key


Reader = Annotated[ApiKey, Depends(_Needs("read"))]
Writer = Annotated[ApiKey, Depends(_Needs("write"))]
Admin = Annotated[ApiKey, Depends(_Needs("admin"))]
