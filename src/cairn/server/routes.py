"""The sync server's routes under ``/v1``: push, pull, status, keyring, devices, API keys, for
admins usage (metering and quota) and the audit log, and for hosted workspaces embed, remember,
recall and list (``cairn.server.hosted``; they take the local HTTP API's request bodies).

Every route but /healthz and /metrics authenticates an API key and works inside that key's
workspace only; the workspace comes from the key, never from the request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, Security
from fastapi.responses import PlainTextResponse
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from cairn import __version__, http_edge, model, protocol
from cairn.api.schemas import (
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
    SinceFilter,
    TagsFilter,
    UntilFilter,
)
from cairn.errors import InvalidInput, NotFound
from cairn.memory_rules import MAX_OFFSET, NewMemory
from cairn.model import MAX_INT, Filters, iso
from cairn.protocol import ID_PATTERN, MAX_PULL_LIMIT, PullPage, WireMutation
from cairn.server import hosted, keyrings, keys
from cairn.server.context import ServerContext, now_ms
from cairn.server.metrics import CONTENT_TYPE
from cairn.server.schemas import (
    KEY_ID_PATTERN,
    AuditOut,
    DeviceIn,
    DeviceOut,
    DevicesOut,
    EmbedIn,
    EmbedOut,
    KeyCreatedOut,
    KeyIn,
    KeyOut,
    KeyringIn,
    KeyringOut,
    KeyringVersionOut,
    KeysOut,
    PullOut,
    PushIn,
    PushOut,
    RollbackIn,
    StatusOut,
    UsageOut,
    inline_schema,
)
from cairn.server.storage import ApiKey, Device

MAX_WAIT = 60.0
SCOPES_PATTERN = r"^(?:[0-9a-f]{8,64}(?:,[0-9a-f]{8,64})*)?$"
"""A ``scope`` query value: scope tags separated by commas, or empty (untagged only)."""

# Operation ids are the endpoints' names (push, pull, create_key, ...): the links below use them.
router = APIRouter(route_class=http_edge.JsonRoute, generate_unique_id_function=lambda r: r.name)


def _links(**links: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """OpenAPI links: what a client (or a stateful fuzzer) may do next with this answer, as
    name=(operation id, its parameters as runtime expressions)."""
    out = {}
    for name, (operation, parameters) in links.items():
        body = parameters.pop("body", None)
        out[name] = {"operationId": operation, "parameters": parameters}
        if body is not None:
            out[name]["requestBody"] = body
    return {"links": out}


_VERSION = "$response.body#/version"
_AS_THE_NEW_KEY = {"header.Authorization": "Bearer {$response.body#/key}"}
PUSH_BODY = inline_schema(PushIn)
"""The push body's schema, for the OpenAPI document (the route reads the body itself)."""
_BEARER = http_edge.BearerKey("An API key of the workspace: `cairn server key create` makes one.")

# Every route that takes a key answers these; the rest are listed route by route.
_KEYED = http_edge.errors(401, 403, 429)
_BODY = http_edge.errors(413, 422)


def _context(request: Request) -> ServerContext:
    context: ServerContext = request.app.state.cairn
    return context


Context = Annotated[ServerContext, Depends(_context)]
DeviceHeader = Annotated[
    str | None,
    Header(pattern=ID_PATTERN, description="The calling device's id, to track its activity."),
]


def _caller(
    request: Request, ctx: Context, authorization: Annotated[str | None, Security(_BEARER)]
) -> ApiKey:
    """The request's API key, authenticated and within its rate limit (failed attempts are
    limited per client address and key id: ``cairn.server.failures``)."""
    key = ctx.failures.authenticate(authorization, request.client.host if request.client else None)
    ctx.limiter.check(key.id)
    if ctx.touches.due(("key", key.id)):
        ctx.storage.touch_key(key.workspace_id, key.id, now_ms())
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


@router.get(
    "/healthz",
    response_model=HealthOut,
    tags=["server"],
    summary="Liveness check (no key needed)",
)
def health() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    tags=["server"],
    summary="Prometheus metrics (no key needed)",
    responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}},
)
def metrics(ctx: Context) -> Response:
    text = ctx.metrics.render(ctx.storage.totals())
    return PlainTextResponse(text, media_type=CONTENT_TYPE)


@router.post(
    "/v1/sync/push",
    response_model=PushOut,
    tags=["sync"],
    summary="Store a batch of mutations",
    description=(
        "All-or-nothing and idempotent by mutation_id. A refused mutation refuses the batch: "
        "422 `invalid_mutation` lists each refused one under `rejected`. 413 "
        "`payload_too_large`: split the batch. 429 `quota_exceeded`: the workspace is full."
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PUSH_BODY}},
        }
    },
    responses={
        200: _links(PullFromTheStart=("pull", {"query.since": 0})),
        **_KEYED,
        **_BODY,
    },
)
async def push(
    request: Request, ctx: Context, key: Writer, x_cairn_device: DeviceHeader = None
) -> dict[str, int | None]:
    # The body is decoded by hand (``_decode_batch``): pydantic would take several times longer
    # over 10,000 mutations, and a refused mutation must be named by its id, not its position.
    mutations, mode = await run_in_threadpool(_decode_batch, await request.body(), ctx, key)
    result = await run_in_threadpool(
        ctx.storage.push, key.workspace_id, mutations, x_cairn_device, now_ms(), key.id
    )
    ctx.metrics.pushed(result.stored, result.duplicates, sum(len(m.payload) for m in mutations))
    if result.stored:
        ctx.notifier.notify(key.workspace_id)
        if mode == protocol.HOSTED:  # searchable soon; a recall folds whatever is left first
            ctx.hosted.schedule(key.workspace_id)
    return {"stored": result.stored, "duplicates": result.duplicates, "last_seq": result.last_seq}


@router.get(
    "/v1/sync/pull",
    tags=["sync"],
    summary="Mutations after a sequence number",
    description="In seq order; `next` resumes after this page and `has_more` says whether to.",
    responses={
        200: {
            "model": PullOut,
            "description": "A page.",
            **_links(NextPage=("pull", {"query.since": "$response.body#/next"})),
        },
        **_KEYED,
        **http_edge.errors(422),
    },
)
async def pull(
    request: Request,
    ctx: Context,
    key: Reader,
    since: Annotated[
        int, Query(ge=0, le=MAX_INT, description="The `next` of the previous page.")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PULL_LIMIT)] = 1000,
    scope: Annotated[
        list[Annotated[str, Field(pattern=SCOPES_PATTERN)]] | None,
        Query(description="Only these scope tags, and untagged mutations (repeatable, or a,b)."),
    ] = None,
    wait: Annotated[
        float, Query(ge=0, le=MAX_WAIT, description="Seconds to wait when nothing is new.")
    ] = 0.0,
    x_cairn_device: DeviceHeader = None,
) -> Response:
    # `scope=` (present but empty) asks for untagged mutations only; no `scope` means all.
    wanted = None if scope is None else [s for r in scope for s in r.split(",") if s]
    workspace = key.workspace_id
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    waited = False
    while True:
        news = ctx.notifier.subscribe(workspace)  # before reading, so no push slips between
        page = await run_in_threadpool(ctx.storage.pull, workspace, since, limit, wanted)
        left = deadline - loop.time()
        if int(page.cursor) != since or left <= 0 or await request.is_disconnected():
            break
        await ctx.notifier.wait(news, min(left, ctx.settings.recheck))
        waited = True
    if waited:  # checked after the last read: a key revoked meanwhile gets nothing it read
        await run_in_threadpool(keys.recheck, ctx.storage, key)
    if x_cairn_device is not None and ctx.touches.due(("device", workspace, x_cairn_device)):
        await run_in_threadpool(ctx.storage.touch_device, workspace, x_cairn_device, now_ms(), True)
    if page.mutations:  # metered and audited when it served something (not every long-poll)
        await run_in_threadpool(
            ctx.storage.record_pull, workspace, key.id, len(page.mutations), now_ms()
        )
    ctx.metrics.pulled(len(page.mutations), sum(len(m.payload) for m in page.mutations))
    return await run_in_threadpool(_page_response, page)


@router.get(
    "/v1/sync/status",
    response_model=StatusOut,
    tags=["sync"],
    summary="This workspace's log, devices and key",
    responses=_KEYED,
)
def status(ctx: Context, key: Reader) -> dict[str, Any]:
    workspace = ctx.storage.workspace_by_id(key.workspace_id)
    stats = ctx.storage.stats(key.workspace_id)
    return {
        "workspace": workspace.name,
        "workspace_id": workspace.id,
        "mode": workspace.mode,
        "latest_seq": stats.latest_seq,
        "mutations": stats.mutations,
        "devices": stats.devices,
        "key": {"id": key.id, "name": key.name, "scopes": list(key.scopes)},
    }


@router.get(
    "/v1/usage",
    response_model=UsageOut,
    tags=["admin"],
    summary="Metering: totals, quota and usage per day",
    responses={**_KEYED, **http_edge.errors(422)},
)
def usage(
    ctx: Context,
    key: Admin,
    days: Annotated[int, Query(ge=1, le=366, description="How many days back (UTC).")] = 30,
) -> dict[str, Any]:
    found = ctx.storage.usage(key.workspace_id, days, now_ms())
    return {
        "mutations": found.mutations,
        "stored_bytes": found.stored_bytes,
        "entities": found.entities,
        "memories": found.memories,
        "quota": {
            "max_mutations": found.quota.max_mutations,
            "max_bytes": found.quota.max_bytes,
        },
        "days": [vars(day) for day in found.days],
    }


@router.get(
    "/v1/audit",
    response_model=AuditOut,
    tags=["admin"],
    summary="Who did what, newest first",
    responses={**_KEYED, **http_edge.errors(422)},
)
def audit(
    ctx: Context,
    key: Admin,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[
        int | None,
        Query(ge=0, le=MAX_INT, description="Only entries older than this (Unix ms): paging."),
    ] = None,
) -> dict[str, Any]:
    entries = ctx.storage.audit_log(key.workspace_id, limit, before)
    return {
        "entries": [
            {
                "at": iso(e.at),
                "at_ms": e.at,
                "key_id": e.key_id,
                "action": e.action,
                "detail": e.detail,
            }
            for e in entries
        ],
        "next_before": entries[-1].at if len(entries) == limit else None,
    }


def _hosted(ctx: ServerContext, key: ApiKey) -> None:
    """409 not_hosted unless the key's workspace is hosted."""
    ctx.hosted.require(ctx.storage.workspace_by_id(key.workspace_id))


_NOT_HOSTED = http_edge.errors(409, e409="The workspace is end-to-end encrypted (not_hosted).")


@router.post(
    "/v1/embed",
    response_model=EmbedOut,
    tags=["hosted"],
    summary="Embed texts with the model devices use (hosted only)",
    responses={**_KEYED, **_BODY, **_NOT_HOSTED},
)
def embed(body: EmbedIn, ctx: Context, key: Reader) -> dict[str, Any]:
    """Unit-length float32 vectors, one per text, from the same ONNX model as a device's default,
    so they compare with the vectors devices make."""
    _hosted(ctx, key)
    vectors = ctx.hosted.embed(body.texts)
    return {
        "model_id": ctx.hosted.embedder.model_id,
        "dim": int(vectors.shape[1]),
        "vectors": [[round(float(x), 7) for x in row] for row in vectors],
    }


@router.post(
    "/v1/remember",
    status_code=201,
    response_model=RememberOut,
    tags=["hosted"],
    summary="Remember a memory (hosted only); devices pull it",
    response_description="Created.",
    responses={
        200: {"model": RememberOut, "description": "An identical memory already existed."},
        **_KEYED,
        **_BODY,
        **_NOT_HOSTED,
    },
    description=(
        "The local HTTP API's body. 201 when a memory was created, 200 when an identical one "
        "already lives in the project (returned, with the new tags added). A memory with the "
        "same project and topic_key as an existing one supersedes the newest of them. The "
        "server embeds it and adds it to the log, vector included, so devices pull it as is."
    ),
)
def remember(body: RememberRequest, response: Response, ctx: Context, key: Writer) -> Any:
    _hosted(ctx, key)
    item = NewMemory(
        body.content,
        model.DEFAULT_KIND if body.kind is None else body.kind,
        body.project or model.DEFAULT_PROJECT,
        body.tags,
        body.topic_key,
    )
    result = ctx.hosted.remember(key.workspace_id, key.id, item, now_ms())
    if result.created:
        ctx.notifier.notify(key.workspace_id)
    else:
        response.status_code = 200
    return result.to_dict()


@router.post(
    "/v1/recall",
    response_model=RecallOut,
    tags=["hosted"],
    summary="Recall by meaning and keyword (hosted only)",
    responses={**_KEYED, **_BODY, **_NOT_HOSTED},
    description=(
        "The local HTTP API's body and answer: semantic (pgvector HNSW on PostgreSQL, exact on "
        "SQLite) and full-text candidates fused by reciprocal rank, as on a device."
    ),
)
def recall(body: RecallRequest, ctx: Context, key: Reader) -> Any:
    _hosted(ctx, key)
    filters = Filters.parse(body.project, body.kinds, body.tags, body.since, body.until)
    hits = ctx.hosted.recall(key.workspace_id, key.id, body.query, filters, body.limit, now_ms())
    return {"results": [hit.to_dict() for hit in hits]}


@router.get(
    "/v1/memories",
    response_model=ListOut,
    tags=["hosted"],
    summary="List memories, newest first (hosted only)",
    responses={**_KEYED, **http_edge.errors(422), **_NOT_HOSTED},
    description="`kind` and `tag` may repeat: any of the kinds, all of the tags.",
)
def list_memories(
    ctx: Context,
    key: Reader,
    project: ProjectFilter = None,
    kind: KindsFilter = None,
    tag: TagsFilter = None,
    since: SinceFilter = None,
    until: UntilFilter = None,
    limit: Annotated[int, Query(ge=1, le=hosted.MAX_LIST)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Any:
    _hosted(ctx, key)
    filters = Filters.parse(project, kind or [], tag or [], since, until)
    found, total = ctx.hosted.list(key.workspace_id, filters, limit, offset)
    return {"memories": [m.to_dict() for m in found], "total": total}


@router.get(
    "/v1/memories/{memory_id}",
    response_model=MemoryOut,
    tags=["hosted"],
    summary="Get a memory by its full id (hosted only)",
    responses={**_KEYED, **http_edge.errors(404, 422), **_NOT_HOSTED},
)
def get_memory(memory_id: str, ctx: Context, key: Reader) -> Any:
    _hosted(ctx, key)
    return ctx.hosted.get(key.workspace_id, memory_id).to_dict()


@router.patch(
    "/v1/memories/{memory_id}",
    response_model=MemoryOut,
    tags=["hosted"],
    summary="Edit a memory (hosted only); devices pull the change",
    description=(
        "The local HTTP API's body: new content (embedded by the server), a new kind, tags to "
        "add. The edit goes into the log like a device's, so devices merge it by the same rule."
    ),
    responses={**_KEYED, **_BODY, **http_edge.errors(404), **_NOT_HOSTED},
)
def edit_memory(memory_id: str, body: EditRequest, ctx: Context, key: Writer) -> Any:
    _hosted(ctx, key)
    change = (body.content, body.kind, body.add_tags)
    memory = ctx.hosted.edit(key.workspace_id, key.id, memory_id, change, now_ms())
    ctx.notifier.notify(key.workspace_id)
    return memory.to_dict()


@router.delete(
    "/v1/memories/{memory_id}",
    response_model=MemoryOut,
    tags=["hosted"],
    summary="Forget a memory (hosted only); devices pull the tombstone",
    responses={**_KEYED, **http_edge.errors(404, 422), **_NOT_HOSTED},
)
def forget_memory(memory_id: str, ctx: Context, key: Writer) -> Any:
    _hosted(ctx, key)
    memory = ctx.hosted.forget(key.workspace_id, key.id, memory_id, now_ms())
    ctx.notifier.notify(key.workspace_id)
    return memory.to_dict()


@router.get(
    "/v1/keyring",
    response_model=KeyringOut,
    tags=["keyring"],
    summary="The workspace's keyring blob",
    responses={
        200: _links(Replace=("put_keyring", {"body": {"expected_version": _VERSION}})),
        **_KEYED,
        **http_edge.errors(404, e404="No keyring yet (not_found)."),
    },
)
def get_keyring(ctx: Context, key: Reader) -> dict[str, Any]:
    keyring = ctx.storage.keyring(key.workspace_id)
    if keyring is None:
        raise NotFound("this workspace has no keyring yet; the first device to set up sync puts it")
    return keyrings.to_json(keyring)


@router.get(
    "/v1/keyring/versions",
    tags=["keyring"],
    summary="Every keyring version, newest first",
    responses={**_KEYED, **http_edge.errors(422)},
)
def keyring_versions(
    ctx: Context, key: Reader, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    """The same ciphertext as ``GET /v1/keyring``, for each version kept: a device that cannot
    authenticate the newest looks back for the newest it can."""
    return {
        "versions": [
            keyrings.to_json(v) for v in ctx.storage.keyring_versions(key.workspace_id, limit)
        ]
    }


@router.put(
    "/v1/keyring",
    response_model=KeyringVersionOut,
    tags=["keyring"],
    summary="Add the next keyring version (compare-and-swap)",
    responses={
        200: _links(
            ReplaceAgain=("put_keyring", {"body": {"expected_version": _VERSION}}),
            Read=("get_keyring", {}),
        ),
        **_KEYED,
        **_BODY,
        **http_edge.errors(
            409,
            e409="expected_version is not the current version (conflict), or the blob is not "
            "a keyring of this workspace (key_mismatch).",
        ),
    },
)
def put_keyring(body: KeyringIn, ctx: Context, key: Writer) -> dict[str, int]:
    """After the first version, only with a valid ``signature`` by the workspace's master key
    (403 keyring_untrusted otherwise); a blob that is not a keyring of this workspace is refused."""
    try:
        blob = base64.b64decode(body.blob, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("blob must be base64") from exc
    signature = bytes.fromhex(body.signature) if body.signature else None
    verify_key = bytes.fromhex(body.verify_key) if body.verify_key else None
    version = keyrings.put(
        ctx.storage,
        key,
        blob,
        body.expected_version,
        body.revoked_key_ids,
        signature,
        verify_key,
        now_ms(),
    )
    return {"version": version}


@router.post(
    "/v1/keyring/rollback",
    tags=["keyring"],
    summary="Roll the keyring back (admin)",
    responses={**_KEYED, **_BODY, **http_edge.errors(404, 409)},
)
def rollback_keyring(body: RollbackIn, ctx: Context, key: Admin) -> dict[str, Any]:
    """Stores an earlier version again as the next one, with its own proof; audited."""
    made = keyrings.rollback(
        ctx.storage, key.workspace_id, key.id, body.version, body.expected_version, now_ms()
    )
    return {"version": made.version, "restored": body.version}


@router.post(
    "/v1/devices",
    response_model=DeviceOut,
    tags=["devices"],
    summary="Register (or rename) a device",
    responses={
        200: _links(
            PushAsIt=("push", {"header.X-Cairn-Device": "$response.body#/device_id"}),
            PullAsIt=("pull", {"header.X-Cairn-Device": "$response.body#/device_id"}),
        ),
        **_KEYED,
        **_BODY,
    },
)
def register_device(body: DeviceIn, ctx: Context, key: Writer) -> dict[str, str]:
    ctx.storage.register_device(key.workspace_id, body.device_id, body.name, now_ms())
    detail = {"device": body.device_id}
    ctx.storage.audit(key.workspace_id, key.id, "device_register", detail, now_ms())
    return {"device_id": body.device_id, "name": body.name}


@router.get(
    "/v1/devices",
    response_model=DevicesOut,
    tags=["devices"],
    summary="The workspace's devices",
    responses=_KEYED,
)
def list_devices(ctx: Context, key: Reader) -> dict[str, list[dict[str, Any]]]:
    return {"devices": [_device(d) for d in ctx.storage.devices(key.workspace_id)]}


@router.post(
    "/v1/auth/keys",
    status_code=201,
    response_model=KeyCreatedOut,
    tags=["keys"],
    summary="Create an API key",
    response_description="Created.",
    responses={
        201: _links(
            StatusWithIt=("status", dict(_AS_THE_NEW_KEY)),
            PushWithIt=("push", dict(_AS_THE_NEW_KEY)),
            PullWithIt=("pull", dict(_AS_THE_NEW_KEY)),
            RevokeIt=("revoke_key", {"path.key_id": "$response.body#/id"}),
        ),
        **_KEYED,
        **_BODY,
    },
)
def create_key(body: KeyIn, ctx: Context, key: Admin) -> dict[str, Any]:
    """The response holds the key itself: it is shown this once and never stored."""
    made, token = keys.issue(ctx.storage, key.workspace_id, body.name, body.scopes, now_ms())
    detail = {"created": made.id, "name": made.name, "scopes": list(made.scopes)}
    ctx.storage.audit(key.workspace_id, key.id, "key_create", detail, now_ms())
    return {**keys.to_json(made), "key": token}


@router.get(
    "/v1/auth/keys",
    response_model=KeysOut,
    tags=["keys"],
    summary="The workspace's API keys (no secrets)",
    responses=_KEYED,
)
def list_keys(ctx: Context, key: Admin) -> dict[str, list[dict[str, Any]]]:
    return {"keys": [keys.to_json(k) for k in ctx.storage.keys(key.workspace_id)]}


@router.delete(
    "/v1/auth/keys/{key_id}",
    response_model=KeyOut,
    tags=["keys"],
    summary="Revoke an API key",
    description="Revoking a revoked key again changes nothing and answers the same.",
    responses={
        **_KEYED,
        **http_edge.errors(422),
        **http_edge.errors(404, e404="The workspace has no such key (not_found)."),
    },
)
def revoke_key(
    key_id: Annotated[str, Path(pattern=KEY_ID_PATTERN)], ctx: Context, key: Admin
) -> dict[str, Any]:
    revoked = ctx.storage.revoke_key(key.workspace_id, key_id, now_ms())
    ctx.storage.audit(key.workspace_id, key.id, "key_revoke", {"revoked": key_id}, now_ms())
    return keys.to_json(revoked)


def _device(device: Device) -> dict[str, Any]:
    return {
        "device_id": device.device_id,
        "name": device.name,
        "first_seen": iso(device.first_seen),
        "last_seen": iso(device.last_seen),
        "pushed": device.pushed,
        "last_push_at": _iso(device.last_push_at),
        "last_pull_at": _iso(device.last_pull_at),
    }


def _iso(ms: int | None) -> str | None:
    return None if ms is None else iso(ms)


def _decode_batch(
    body: bytes, ctx: ServerContext, key: ApiKey
) -> tuple[Sequence[WireMutation], str]:
    """The checked mutations of a push body and the workspace's mode; InvalidInput or
    MutationRejected otherwise.

    An end-to-end workspace takes sealed envelopes only, under no key id its keyring revoked;
    a hosted one, payloads its server can read.
    """
    try:
        data = http_edge.decode_json(body)
    except ValueError as exc:
        raise InvalidInput(
            f'the request body is not valid JSON ({exc}); send {{"mutations": [...]}}'
        ) from exc
    if not isinstance(data, dict) or set(data) != {"mutations"}:
        raise InvalidInput('the request body must be a JSON object {"mutations": [...]}')
    mutations = protocol.many_from_json(data["mutations"])
    mode = ctx.storage.workspace_by_id(key.workspace_id).mode
    sealed = mode == protocol.E2E
    keyring = ctx.storage.keyring(key.workspace_id) if sealed else None
    protocol.check_batch(mutations, sealed, keyring.revoked if keyring else ())
    if not sealed:
        hosted.readable(mutations)
    return mutations, mode


def _page_response(page: PullPage) -> Response:
    """Encoded off the event loop: a page can hold megabytes of base64."""
    return Response(
        protocol.page_body(page.mutations, page.cursor, page.has_more),
        media_type="application/json",
    )
