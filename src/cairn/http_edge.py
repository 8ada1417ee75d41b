"""How a request body is read and an error leaves, alike in the local API and the sync server.

Every error is ``{"error": {"code", "message"}}`` with the status from ``cairn.errors``, for
unknown routes and wrong methods too (with an ``Allow`` header naming every method of the path),
so a client maps any failure back to an exception by its code. A body that is not JSON, not
UTF-8 or nested deeper than the parser goes is ``invalid_input`` (422) like any other bad input,
never a 400 of the framework's or a 500.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security.base import SecurityBase
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match

from cairn.errors import AuthFailed, CairnError, InvalidInput, RateLimited, StoreError


class RejectedOut(BaseModel):
    mutation_id: str
    code: str = Field(description="Why: invalid_mutation, unsealed_payload, revoked_key, ...")
    message: str


class ErrorBody(BaseModel):
    code: str = Field(description="Stable, for programs: not_found, content_too_large, ...")
    message: str = Field(description="For people: what went wrong and what to do next.")
    rejected: list[RejectedOut] = Field(
        default_factory=list,
        description="A refused push (invalid_mutation) only: each refused mutation and why.",
    )


class ErrorOut(BaseModel):
    error: ErrorBody


Handler = Callable[[Request, Any], Coroutine[Any, Any, Response]]

# Errors that are not CairnErrors (unknown route, wrong method, foreign Host) get a code too.
_HTTP_CODES = {
    401: "unauthorized",
    403: "host_not_allowed",
    404: "not_found",
    405: "method_not_allowed",
}


def decode_json(body: bytes) -> Any:
    """The JSON document in ``body``; ``json.JSONDecodeError`` (with a reason a person can act
    on) when it is not one, including when it is not UTF-8, nests deeper than Python's parser
    can recurse (``[`` a hundred thousand times is a 100 KB body) or holds an integer of more
    digits than Python converts."""
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        raise
    except RecursionError as exc:
        raise json.JSONDecodeError("arrays or objects nested too deeply", "", 0) from exc
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError(f"not UTF-8 ({exc.reason})", "", exc.start) from exc
    except ValueError as exc:
        raise json.JSONDecodeError(str(exc), "", 0) from exc


class JsonRequest(Request):
    """A request whose JSON body is read by ``decode_json``: FastAPI turns its errors into
    validation errors (422), where the parser's own RecursionError became a 400 or a 500."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = decode_json(await self.body())
        return self._json


class JsonRoute(APIRoute):
    """A route that hands its endpoint a ``JsonRequest``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            return await handler(JsonRequest(request.scope, request.receive))

        return handle


class BearerKey(SecurityBase):
    """The ``Authorization: Bearer cairn_...`` scheme, documented in OpenAPI; hands the raw
    header to the caller, which authenticates it and words its own errors."""

    def __init__(self, description: str) -> None:
        self.model = HTTPBearerModel(bearerFormat="cairn_<id>_<secret>", description=description)
        self.scheme_name = "ApiKey"

    async def __call__(self, request: Request) -> str | None:
        return request.headers.get("authorization")


def error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The one error shape."""
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def handlers(log_hint: str, store_log: logging.Logger | None = None) -> dict[Any, Handler]:
    """The exception handlers of an app; ``log_hint`` says where a server error is logged
    (e.g. "the `cairn serve` log"). With ``store_log``, a failure of the app's own database is
    a 503 whose details go to that log only (a server's clients must not read its database's
    URL, role or file); without it (the local API, whose user owns the store) it is said."""

    async def on_cairn_error(request: Request, exc: CairnError) -> JSONResponse:
        if store_log is not None and isinstance(exc, StoreError):
            # Trigger: the server's own database failed (restarting, unreachable, locked).
            # Outcome: logged here; the client gets a 503 without the details, which it
            # retries as it retries an unreachable server.
            store_log.error("%s %s: %s", request.method, request.url.path, exc.message)
            message = "the server's database failed this request; sync again in a moment"
            return error(503, exc.code, message)
        headers: dict[str, str] = {}
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        if isinstance(exc, AuthFailed):
            headers["WWW-Authenticate"] = 'Bearer realm="cairn"'
        return JSONResponse({"error": exc.to_dict()}, exc.http_status, headers or None)

    async def on_invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await on_cairn_error(request, InvalidInput(describe(exc.errors())))

    async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = str(exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code in (404, 405):
            message = f"{request.method} {request.url.path}: {exc.detail}; /docs lists the routes"
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error(exc.status_code, code, message, headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after this response, so the traceback still reaches the log.
        unexpected = CairnError(f"unexpected {type(exc).__name__}; see {log_hint}")
        return await on_cairn_error(request, unexpected)

    return {
        CairnError: on_cairn_error,
        RequestValidationError: on_invalid_request,
        HTTPException: on_http_error,
        Exception: on_unexpected,
    }


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app serves at the request's path (Starlette names only
    the first route that matched the path, so a path with GET and POST routes said one)."""
    methods: set[str] = set()
    for route in _flatten(request.app.router.routes):
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def _flatten(routes: Sequence[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route, those of included routers too (FastAPI keeps an included router whole;
    both apps include theirs without a prefix, so its routes match paths as they are)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        yield from _flatten(inner.routes) if inner is not None else (route,)


def describe(errors: Sequence[Any]) -> str:
    """One sentence from pydantic's validation errors, naming each bad field."""
    parts = []
    for found in errors:
        if found["type"] == "json_invalid":
            return (
                f"the request body is not valid JSON ({found['ctx']['error']} at character "
                f"{found['loc'][-1]}); send a JSON object as shown in /docs"
            )
        loc = [str(part) for part in found["loc"]]
        if loc == ["body"]:
            return (
                "the request body must be a JSON object sent with "
                "Content-Type: application/json; /docs shows the expected shape"
            )
        name = ".".join(loc[1:]) or loc[0]
        if found["type"] == "string_pattern_mismatch":  # the pattern itself is for /docs
            parts.append(f"{name}: {found['input']!r} is not in the form /docs gives")
        else:
            parts.append(f"{name}: {found['msg']}")
    return "; ".join(parts) + "; /docs shows the expected shape"


_MEANINGS = {
    401: "No valid API key (auth_failed); the WWW-Authenticate header names the scheme.",
    403: "The key lacks the scope this needs (forbidden).",
    404: "Not found (not_found).",
    409: "Conflicts with the current state (conflict, not_hosted, key_mismatch).",
    413: "Too large: the request body (payload_too_large) or a memory's content "
    "(content_too_large).",
    422: "Invalid input; nothing changed (invalid_input, or a code naming the rule).",
    429: "Too many requests (rate_limited, with Retry-After) or over the workspace's quota "
    "(quota_exceeded).",
}


def errors(*statuses: int, **meanings: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for these error statuses, all in the ErrorOut shape; ``meanings`` (keyed
    ``e404=...``) replace the generic description of a status where a route says more."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        text = meanings.get(f"e{status}", _MEANINGS[status])
        out[status] = {"model": ErrorOut, "description": text}
    return out
