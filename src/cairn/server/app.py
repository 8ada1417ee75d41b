"""The sync server's FastAPI app and its runner; every error leaves as one JSON shape.

Errors are ``{"error": {"code", "message"}}`` with the status from ``cairn.errors`` (a refused
batch adds ``"rejected": [{mutation_id, code, message}]``), for unknown routes and wrong
methods too, so a client maps any failure back to an exception by its code. A failure of the
server's own database is a 503 whose details go to the server's log, not to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from cairn import __version__
from cairn.embedding.base import Embedder
from cairn.errors import AuthFailed, CairnError, InvalidInput, RateLimited, StoreError
from cairn.server import backends
from cairn.server.context import ServerContext, ServerSettings
from cairn.server.limits import BodyLimit
from cairn.server.metrics import RequestMetrics
from cairn.server.routes import router
from cairn.server.storage import ServerStorage

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
# Seconds a stopping server gives open requests (long-polls included) before closing them.
SHUTDOWN_GRACE = 5

_log = logging.getLogger("cairn.server")
_WORKER_ENV = "CAIRN_SERVER_WORKER"  # what `run_workers` hands each worker process
# Errors that are not CairnErrors (unknown route, wrong method) get a code too.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def create_app(
    storage: ServerStorage, settings: ServerSettings | None = None, embedder: Embedder | None = None
) -> FastAPI:
    """The sync server over ``storage``; the caller owns (and closes) the storage.
    ``embedder``: for hosted workspaces (None: the bundled model, loaded on first use)."""
    context = ServerContext(storage, settings or ServerSettings(), embedder)
    app = FastAPI(
        title="Cairn sync server",
        version=__version__,
        summary="Stores each workspace's encrypted mutation log for Cairn devices to sync.",
        description=(
            "Authenticate with `Authorization: Bearer cairn_...`. Errors are "
            '`{"error": {"code": ..., "message": ...}}`; a refused request changes nothing.'
        ),
        exception_handlers={
            CairnError: _on_cairn_error,
            RequestValidationError: _on_invalid_request,
            HTTPException: _on_http_error,
            Exception: _on_unexpected,
        },
    )
    app.state.cairn = context
    app.include_router(router)
    app.router.add_event_handler("shutdown", context.hosted.close)  # before the storage closes
    _while_serving(app, context.failures.run)
    app.router.add_event_handler("shutdown", lambda: context.failures.flush(final=True))
    # Added last = outermost: metrics count the body limit's 413s too.
    app.add_middleware(BodyLimit, max_bytes=context.settings.max_body)
    app.add_middleware(RequestMetrics, metrics=context.metrics)
    return app


def _while_serving(app: FastAPI, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Runs ``work`` as a task of the app's event loop from its startup to its shutdown."""
    tasks: list[asyncio.Task[None]] = []

    async def start() -> None:
        tasks.append(asyncio.create_task(work()))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.router.add_event_handler("startup", start)
    app.router.add_event_handler("shutdown", stop)


def run(
    storage: ServerStorage,
    settings: ServerSettings | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    log_level: str = "warning",
    forwarded_allow_ips: str | None = None,
) -> None:
    """Serve until interrupted."""
    configure_logging(log_level)
    uvicorn.run(
        create_app(storage, settings),
        host=host,
        port=port,
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
        **_uvicorn_options(log_level, forwarded_allow_ips),
    )


def run_workers(
    workers: int,
    settings: ServerSettings,
    data: Path,
    db: str | None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    log_level: str = "warning",
    forwarded_allow_ips: str | None = None,
) -> None:
    """Serve with ``workers`` processes until interrupted; each builds its app with
    ``worker_app`` from what this process puts in its environment."""
    os.environ[_WORKER_ENV] = json.dumps(
        {"settings": asdict(settings), "data": str(data), "db": db, "log_level": log_level}
    )
    configure_logging(log_level)
    uvicorn.run(
        "cairn.server.app:worker_app",
        factory=True,
        workers=workers,
        http="cairn.server.app:NoDelayHTTP",
        host=host,
        port=port,
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
        **_uvicorn_options(log_level, forwarded_allow_ips),
    )


def configure_logging(level: str) -> None:
    """Cairn's (and libraries') log records at ``level`` and above go to standard error;
    uvicorn configures its own loggers."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _uvicorn_options(log_level: str, forwarded_allow_ips: str | None) -> dict[str, Any]:
    """X-Forwarded-For is believed only from the proxies named: uvicorn would otherwise trust
    it from 127.0.0.1, letting any local client pick the address its failures count against."""
    return {
        "log_level": log_level,
        "proxy_headers": forwarded_allow_ips is not None,
        "forwarded_allow_ips": forwarded_allow_ips,
    }


class NoDelayHTTP(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol with Nagle's algorithm off on every connection.

    With ``--workers`` uvicorn binds the listening socket itself (protocol 0), and asyncio then
    skips TCP_NODELAY on the connections it accepts: each small response waited for the client's
    delayed ACK, ~40 ms (uvicorn issue 3149; bench_load measured /healthz at 44 ms with two
    workers against 1.1 ms with one).
    """

    def connection_made(self, transport: asyncio.Transport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def worker_app() -> FastAPI:
    """One worker process's app (``cairn server run --workers N``): its own storage (its own
    connections), closed when the worker stops."""
    spec = json.loads(os.environ[_WORKER_ENV])
    configure_logging(spec["log_level"])
    storage = backends.open_storage(Path(spec["data"]), spec["db"])
    app = create_app(storage, ServerSettings(**spec["settings"]))
    app.router.add_event_handler("shutdown", storage.close)
    return app


def _error(exc: CairnError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.http_status, headers=headers)


async def _on_cairn_error(request: Request, exc: CairnError) -> JSONResponse:
    if isinstance(exc, StoreError):
        # Trigger: the server's own database failed (restarting, unreachable, locked). Why: its
        # message names the database (URL, role, host, file) and is for the operator, who
        # otherwise never sees it. Outcome: logged here; the client gets a 503 without it,
        # which it retries as it retries an unreachable server.
        _log.error("%s %s: %s", request.method, request.url.path, exc.message)
        message = "the server's database failed this request; sync again in a moment"
        return JSONResponse({"error": {"code": exc.code, "message": message}}, status_code=503)
    if isinstance(exc, RateLimited):
        return _error(exc, {"Retry-After": str(max(1, math.ceil(exc.retry_after)))})
    if isinstance(exc, AuthFailed):
        return _error(exc, {"WWW-Authenticate": 'Bearer realm="cairn"'})
    return _error(exc)


async def _on_invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(InvalidInput(_describe(exc.errors())))


async def _on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
    message = str(exc.detail)
    if exc.status_code in (404, 405):
        message = f"{request.method} {request.url.path}: {exc.detail}; /docs lists the routes"
    body = {"error": {"code": _HTTP_CODES.get(exc.status_code, "http_error"), "message": message}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises after this response, so the traceback still reaches the server log.
    return _error(CairnError(f"unexpected {type(exc).__name__}; see the `cairn server run` log"))


def _describe(errors: Sequence[Any]) -> str:
    """One sentence from pydantic's validation errors, naming each bad field."""
    parts = []
    for error in errors:
        if error["type"] == "json_invalid":
            return "the request body is not valid JSON; send a JSON object as shown in /docs"
        loc = [str(part) for part in error["loc"]]
        if loc == ["body"]:
            return (
                "the request body must be a JSON object sent with "
                "Content-Type: application/json; /docs shows the expected shape"
            )
        parts.append(f"{'.'.join(loc)}: {error['msg']}")
    return "; ".join(parts) + "; /docs shows the expected shape"
