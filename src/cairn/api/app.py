"""The local HTTP API that ``cairn serve`` runs: the store's verbs as JSON routes under ``/v1``.

Every error leaves as ``{"error": {"code", "message"}}`` with the status from ``cairn.errors``.
The API has no authentication, so it listens on 127.0.0.1 by default and answers only requests
whose Host header names this machine: a web page cannot reach it through DNS rebinding.
"""

from __future__ import annotations

import errno
import hmac
import socket
import sys
from collections.abc import Callable, Collection
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Query, Request, Response
from starlette.exceptions import HTTPException

from cairn import http_edge, model, views
from cairn.api import browser, browser_sync
from cairn.api.schemas import (
    MemoryDetailOut,
    StatsOut,
)
from cairn.api.sync import add_sync_routes
from cairn.device_store import Store
from cairn.errors import InvalidInput, StoreError
from cairn.http_schemas import (
    EditRequest,
    HealthOut,
    KindsFilter,
    ListOut,
    MemoryOut,
    ProjectFilter,
    RecallOut,
    RecallRequest,
    RememberOut,
    RememberRequest,
    TagsFilter,
)
from cairn.memory_rules import MAX_LIMIT, MAX_OFFSET
from cairn.model import Filters
from cairn.settings import Settings
from cairn.version import __version__
from cairn.web import csrf, openapi, templating
from cairn.wiring import SyncControl, build

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7777
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})

# OpenAPI entries for the errors each route can return (all in the ErrorOut shape).
_INVALID = http_edge.errors(422)
_NOT_FOUND = http_edge.errors(404, e404="No such (live) memory.")
_TOO_LARGE = http_edge.errors(413, e413="Content over 64 KiB (content_too_large).")
# What a client may do next with a remembered memory (OpenAPI links, followed by stateful tests).
_MEMORY = {"path.memory_id": "$response.body#/id"}
_WHAT_IT_MADE: dict[str, Any] = {
    "links": {
        "GetIt": {"operationId": "get_memory", "parameters": _MEMORY},
        "ForgetIt": {"operationId": "forget", "parameters": _MEMORY},
    }
}
_FOREIGN_HOST = http_edge.errors(
    403, e403="The Host header names another machine (host_not_allowed)."
)


def create_app(
    store: Store,
    allowed_hosts: Collection[str] | None = LOOPBACK_HOSTS,
    sync: SyncControl | None = None,
    token: str | None = None,
    settings: Settings | None = None,
) -> FastAPI:
    """The API over ``store`` (and ``sync``, for the sync routes), and the memory browser at
    ``/``; ``allowed_hosts=None`` accepts any Host header; with ``token``, every route but
    /healthz and /signin needs it, as a bearer or as the browser's sign-in cookie."""
    expected = f"Bearer {token}".encode() if token else None
    signed_in = browser.session_value(token) if token else None

    def check_token(request: Request) -> None:
        if expected is None or request.url.path in ("/healthz", "/signin"):
            return
        given = request.headers.get("authorization", "").encode()
        cookie = request.cookies.get(browser.SESSION_COOKIE, "").encode()
        if hmac.compare_digest(given, expected) or (
            signed_in is not None and hmac.compare_digest(cookie, signed_in.encode())
        ):
            return
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            # A person at a browser: the sign-in page, where a program gets the 401 below.
            raise HTTPException(303, "sign in first", headers={"Location": "/signin"})
        raise HTTPException(
            401,
            "this Cairn API needs its token: send `Authorization: Bearer <token>` with the "
            "value of CAIRN_LOCAL_TOKEN (or --token) that `cairn serve` was started with",
        )

    def check_host(request: Request) -> None:
        if allowed_hosts is None:
            return
        host = _host_name(request.headers.get("host", ""))
        if host not in allowed_hosts:
            raise HTTPException(
                403,
                f"this Cairn API answers only requests to {', '.join(sorted(allowed_hosts))}, "
                f"not {host!r}; use http://127.0.0.1 or start `cairn serve --host` on that name",
            )

    app = FastAPI(
        title="Cairn",
        version=__version__,
        summary="Local memory for AI coding agents: remember, recall, list, forget.",
        description=(
            "The HTTP API of one local Cairn store. Errors are "
            '`{"error": {"code": ..., "message": ...}}`; bad input changes nothing.'
        ),
        dependencies=[Depends(check_host), Depends(check_token)],
        responses=_FOREIGN_HOST,
        generate_unique_id_function=lambda route: route.name,  # operation ids: for the links
        exception_handlers=http_edge.handlers("the `cairn serve` log"),
        docs_url=None,  # cairn.web.openapi serves /docs from the package, not a CDN
        redoc_url=None,
    )
    app.router.route_class = http_edge.JsonRoute
    templating.mount_assets(app)
    openapi.add_docs(app)
    pages = browser.Pages(templating.environment("cairn.api"), csrf.CsrfTokens())
    browser.add_browser(app, store, pages)
    browser_sync.add_sync_pages(
        app, store, sync, settings or (sync.settings if sync else None), pages
    )
    if token:
        browser.add_signin(app, pages, token)

    @app.post(
        "/v1/memories",
        status_code=201,
        response_model=RememberOut,
        tags=["memories"],
        summary="Remember a memory",
        description=(
            "Stores the content with its embedding. 201 when a memory was created; 200 when an "
            "identical memory already lives in the project (it is returned, with the new tags "
            "added). A memory with the same project and topic_key as a live one supersedes it."
        ),
        response_description="Created.",
        responses={
            201: _WHAT_IT_MADE,
            200: {
                "model": RememberOut,
                "description": "An identical memory already existed.",
                **_WHAT_IT_MADE,
            },
            **_TOO_LARGE,
            **_INVALID,
        },
    )
    def remember(body: RememberRequest, response: Response) -> dict[str, Any]:
        result = store.remember(
            body.content,
            kind=model.DEFAULT_KIND if body.kind is None else body.kind,
            project=body.project,
            tags=body.tags,
            topic_key=body.topic_key,
        )
        if not result.created:
            response.status_code = 200
        return result.to_dict()

    @app.post(
        "/v1/recall",
        response_model=RecallOut,
        tags=["memories"],
        summary="Recall memories by meaning and keyword",
        description=(
            "Hybrid search (embedding similarity fused with BM25 keyword rank), then filters. "
            "Each result says `why` it matched."
        ),
        responses=_INVALID,
    )
    def recall(body: RecallRequest) -> dict[str, Any]:
        filters = Filters.parse(body.project, body.kinds, body.tags, body.since, body.until)
        hits = store.recall(body.query, filters, body.limit)
        return views.recalled(hits)

    @app.get(
        "/v1/memories",
        response_model=ListOut,
        tags=["memories"],
        summary="List memories, newest first",
        description="`kind` and `tag` may repeat: any of the kinds, all of the tags.",
        responses=_INVALID,
    )
    def list_memories(
        project: ProjectFilter = None,
        kind: KindsFilter = None,
        tag: TagsFilter = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> dict[str, Any]:
        filters = Filters.parse(project, kind or [], tag or [])
        return views.page(store.list(filters, limit, offset), store.count(filters))

    @app.get(
        "/v1/memories/{memory_id}",
        response_model=MemoryDetailOut,
        tags=["memories"],
        summary="Get a memory and its relations",
        description="`memory_id` is the full id or a unique prefix of 8 or more characters.",
        responses={**_NOT_FOUND, **_INVALID},
    )
    def get_memory(memory_id: str) -> dict[str, Any]:
        memory = store.get(memory_id)
        return views.detail(memory, store.relations(memory.id))

    @app.patch(
        "/v1/memories/{memory_id}",
        response_model=MemoryOut,
        tags=["memories"],
        summary="Edit a memory",
        description=(
            "Changes the content (embedded again) and/or kind, and adds tags; the change syncs. "
            "Returns the edited memory. `memory_id` may be a unique prefix of 8+ characters."
        ),
        responses={**_NOT_FOUND, **_INVALID},
    )
    def edit(memory_id: str, body: EditRequest) -> dict[str, Any]:
        return store.edit(
            memory_id, content=body.content, kind=body.kind, tags=body.add_tags
        ).to_dict()

    @app.delete(
        "/v1/memories/{memory_id}",
        response_model=MemoryOut,
        tags=["memories"],
        summary="Forget a memory",
        description=(
            "Turns the memory into a tombstone (content, tags and vector erased; the id stays "
            "known so the deletion syncs) and returns the tombstone. Forgetting it again changes "
            "nothing and returns the tombstone too; an id never known is 404."
        ),
        responses={**_NOT_FOUND, **_INVALID},
    )
    def forget(memory_id: str) -> dict[str, Any]:
        return store.forget(memory_id).to_dict()

    @app.get(
        "/v1/stats",
        response_model=StatsOut,
        tags=["store"],
        summary="Counts and facts about the store",
    )
    def stats() -> dict[str, Any]:
        return store.stats()

    add_sync_routes(app, sync)

    @app.get(
        "/healthz",
        response_model=HealthOut,
        tags=["store"],
        summary="Liveness check",
        description="200 with status ok while the server is up.",
    )
    def health() -> dict[str, str]:
        return views.health()

    return app


def run(
    settings: Settings,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    autosync: bool = True,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the API over the store named by ``settings`` until interrupted, syncing it in the
    background unless ``autosync`` is off; ``on_ready`` hears where it listens, once it does.

    The port is taken first, so a busy one fails at once with a clear error; the model and the
    vector index load before requests are served, so a missing model fails here with its
    CairnError, and the first request is as fast as the rest. A damaged store is served all the
    same: each route that touches the damage answers ``store_corrupt``.
    """
    token = settings.local_token
    if _host_name(host) not in LOOPBACK_HOSTS and not token:
        raise InvalidInput(
            f"--host {host} would open this unauthenticated API (every memory, forget included) "
            "to the network; set a token first (`cairn serve --token ...` or CAIRN_LOCAL_TOKEN) "
            "and send it as `Authorization: Bearer <token>`, or keep the default 127.0.0.1"
        )
    sock = _listen(host, port)
    store = None
    sync = None
    try:
        store = build(settings)
        try:
            store.warm_up()
        except StoreError as exc:  # damaged or long locked: each route answers the error
            print(f"cairn serve: {exc.message}", file=sys.stderr)
        sync = SyncControl(settings, store, autosync)
        # Listening beyond this machine was asked for, so requests will name other hosts.
        hosts = None if host in _ANY_ADDRESS else LOOPBACK_HOSTS | {_host_name(host)}
        app = create_app(store, allowed_hosts=hosts, sync=sync, token=token, settings=settings)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        if on_ready is not None:
            bound = sock.getsockname()[1]
            where = f"[{host}]" if ":" in host else host
            on_ready(
                f"cairn serve: the local API on http://{where}:{bound} (memory browser at /, "
                f"OpenAPI docs at /docs), "
                f"store {store.db.path}; Ctrl-C stops it"
            )
        server.run(sockets=[sock])
    finally:
        sock.close()
        if sync is not None:
            sync.close()
        if store is not None:
            store.close()


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (uvicorn listens on it): an address in use is bad input
    with what to do, not a server log."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise InvalidInput(
                f"{host}:{port} is in use (another `cairn serve`?); stop that process or pick "
                "another port with --port"
            ) from exc
        raise InvalidInput(
            f"cannot listen on {host}:{port} ({exc.strerror}); check --host and --port"
        ) from exc
    return sock


def _host_name(host: str) -> str:
    """The name in a Host header or a bind address, without port or IPv6 brackets."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host
