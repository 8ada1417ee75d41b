"""The sync server's FastAPI app and its runner; every error leaves as one JSON shape.

Errors are ``{"error": {"code", "message"}}`` with the status from ``cairn.errors`` (a refused
batch adds ``"rejected": [{mutation_id, code, message}]``), for unknown routes and wrong
methods too (``cairn.http_edge``), so a client maps any failure back to an exception by its code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import socket
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from cairn import __version__, http_edge
from cairn.embedding.base import Embedder
from cairn.server import backends, console
from cairn.server.context import ServerContext, ServerSettings
from cairn.server.limits import BodyLimit
from cairn.server.mcp import McpEndpoint
from cairn.server.metrics import RequestMetrics
from cairn.server.notify import Notifier
from cairn.server.routes import router
from cairn.server.storage import ServerStorage
from cairn.web import openapi

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
# Seconds a stopping server gives open requests (long-polls included) before closing them.
SHUTDOWN_GRACE = 5
WORKER_HEALTHCHECK = 30
"""Seconds a worker may take to answer its supervisor's ping before it is killed and started
again. uvicorn's 5 s killed workers still starting (importing, connecting) on a busy machine,
again and again, so a server under load never came up."""
OPEN_FILES = 16_384
"""Open files a worker wants: each waiting long-poll is a socket (5,000 devices and room)."""

_log = logging.getLogger("cairn.server")
_WORKER_ENV = "CAIRN_SERVER_WORKER"  # what `run_workers` hands each worker process


def create_app(
    storage: ServerStorage,
    settings: ServerSettings | None = None,
    embedder: Embedder | None = None,
    notifier: Notifier | None = None,
) -> FastAPI:
    """The sync server over ``storage``; the caller owns (and closes) the storage.
    ``embedder``: for hosted workspaces (None: the bundled model, loaded on first use).
    ``notifier``: how its long-polls hear of other processes' pushes (``backends.open_notifier``;
    None: of this process's only)."""
    context = ServerContext(
        storage, settings or ServerSettings(), embedder, notifier=notifier or Notifier()
    )
    app = FastAPI(
        title="Cairn sync server",
        version=__version__,
        summary="Stores each workspace's encrypted mutation log for Cairn devices to sync.",
        description=(
            "Authenticate with `Authorization: Bearer cairn_...`. Errors are "
            '`{"error": {"code": ..., "message": ...}}`; a refused request changes nothing.'
        ),
        exception_handlers=http_edge.handlers("the `cairn server run` log", _log),
        docs_url=None,  # cairn.web.openapi serves /docs from the package, not a CDN
        redoc_url=None,
    )
    app.state.cairn = context
    openapi.add_docs(app)
    app.include_router(router)
    mcp = McpEndpoint(context)  # cloud agents' MCP clients, for hosted workspaces
    app.include_router(mcp.router())
    _while_serving(app, mcp.run)
    app.mount(console.PATH, console.console_app(context))  # its pages use the /docs assets
    app.router.add_event_handler("startup", context.notifier.start)
    app.router.add_event_handler("shutdown", context.notifier.stop)
    app.router.add_event_handler("shutdown", context.hosted.close)  # before the storage closes
    _while_serving(app, context.failures.run)
    _while_serving(app, context.compactor.run)
    app.router.add_event_handler("shutdown", lambda: context.failures.flush(final=True))
    _while_serving(app, context.key_cache.run)
    _while_serving(app, context.seen.run)
    app.router.add_event_handler("shutdown", context.seen.close)
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
    notifier: Notifier | None = None,
) -> None:
    """Serve until interrupted."""
    configure_logging(log_level)
    raise_open_files()
    uvicorn.run(
        create_app(storage, settings, notifier=notifier),
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
    raise_open_files()  # the workers inherit the limit
    uvicorn.run(
        "cairn.server.app:worker_app",
        factory=True,
        workers=workers,
        http="cairn.server.app:NoDelayHTTP",
        host=host,
        port=port,
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
        timeout_worker_healthcheck=WORKER_HEALTHCHECK,
        **_uvicorn_options(log_level, forwarded_allow_ips),
    )


def configure_logging(level: str) -> None:
    """Cairn's (and libraries') log records at ``level`` and above go to standard error;
    uvicorn configures its own loggers."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def raise_open_files(wanted: int = OPEN_FILES) -> int:
    """Raise this process's soft limit on open files to the hard limit (``wanted`` if there is
    none), logging what an operator must set when that stays below ``wanted``; the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = wanted if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
            soft = ceiling
    if soft != resource.RLIM_INFINITY and soft < wanted:
        _log.warning(
            "open files are limited to %s here (hard limit %s): each waiting long-poll holds "
            "one, so about %s devices can wait at once; raise the hard limit to %s or more "
            "(systemd LimitNOFILE=, docker --ulimit nofile=, /etc/security/limits.conf nofile)",
            soft,
            hard,
            max(soft - 100, 0),
            wanted,
        )
    return int(soft)


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
    notifier = backends.open_notifier(Path(spec["data"]), spec["db"])
    app = create_app(storage, ServerSettings(**spec["settings"]), notifier=notifier)
    app.router.add_event_handler("shutdown", storage.close)
    return app
