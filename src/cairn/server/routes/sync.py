"""The sync server's log routes: push a batch of mutations, pull pages of them, the status."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Header, Query, Request, Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from cairn import binary_pages, http_edge, protocol
from cairn.errors import InvalidInput
from cairn.model import MAX_INT
from cairn.protocol import ID_PATTERN, MAX_PULL_LIMIT, PullPage, WireMutation
from cairn.server import hosted, keys
from cairn.server.context import ServerContext, now_ms
from cairn.server.routes.common import (
    BODY,
    KEYED,
    Context,
    Reader,
    Writer,
    links,
    new_router,
)
from cairn.server.schemas import PullOut, PushIn, PushOut, StatusOut, inline_schema
from cairn.server.storage import ApiKey

MAX_WAIT = 60.0
SCOPES_PATTERN = r"^(?:[0-9a-f]{8,64}(?:,[0-9a-f]{8,64})*)?$"
"""A ``scope`` query value: scope tags separated by commas, or empty (untagged only)."""
PUSH_BODY = inline_schema(PushIn)
"""The push body's schema, for the OpenAPI document (the route reads the body itself)."""
BINARY = {binary_pages.MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}
"""The binary form in the OpenAPI document: its shape is in the sync protocol's docs."""

DeviceHeader = Annotated[
    str | None,
    Header(pattern=ID_PATTERN, description="The calling device's id, to track its activity."),
]

router = new_router()


@router.post(
    "/v1/sync/push",
    response_model=PushOut,
    tags=["sync"],
    summary="Store a batch of mutations",
    description=(
        "All-or-nothing and idempotent by mutation_id. A refused mutation refuses the batch: "
        "422 `invalid_mutation` lists each refused one under `rejected`. 413 "
        "`payload_too_large`: split the batch. 429 `quota_exceeded`: the workspace is full. "
        f"The body may also be sent as `{binary_pages.MEDIA_TYPE}` (MessagePack: each "
        "mutation an array, its payload raw bytes; see the sync protocol in the server docs)."
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": PUSH_BODY},
                **BINARY,
            },
        }
    },
    responses={
        200: links(PullFromTheStart=("pull", {"query.since": 0})),
        **KEYED,
        **BODY,
    },
)
async def push(
    request: Request, ctx: Context, key: Writer, x_cairn_device: DeviceHeader = None
) -> dict[str, int | None]:
    # The body is decoded by hand (``_decode_batch``): pydantic would take several times longer
    # over 10,000 mutations, and a refused mutation must be named by its id, not its position.
    mutations, mode = await run_in_threadpool(
        _decode_batch, await request.body(), request.headers.get("content-type"), ctx, key
    )
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
    description=(
        "In seq order; `next` resumes after this page and `has_more` says whether to. A client "
        f"that lists `{binary_pages.MEDIA_TYPE}` in Accept gets the page as MessagePack "
        "(each mutation an array, its payload raw bytes); any other gets JSON."
    ),
    responses={
        200: {
            "model": PullOut,
            "description": "A page.",
            "content": BINARY,
            **links(NextPage=("pull", {"query.since": "$response.body#/next"})),
        },
        **KEYED,
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
    page = PullPage([], str(since), False)  # the answer of a long-poll that never read
    reread = False
    while True:
        news = ctx.notifier.subscribe(workspace)  # before reading, so no push slips between
        # A long-poll already at the latest seq this process read, with no news since, skips
        # its first read: any push after that read sets `news`. Its re-reads never skip.
        if reread or wait <= 0 or ctx.notifier.known_latest(workspace, news) != since:
            page = await run_in_threadpool(ctx.storage.pull, workspace, since, limit, wanted)
            if not page.has_more:  # its cursor is the workspace's latest seq
                ctx.notifier.remember(workspace, int(page.cursor), news)
        left = deadline - loop.time()
        if int(page.cursor) != since or left <= 0 or await request.is_disconnected():
            break
        # On the event loop, outside any thread or database connection; news wakes it, else
        # a safety re-read every `recheck` s. Waited out with no news: answer what was read.
        woken = await ctx.notifier.wait(news, min(left, ctx.settings.recheck))
        waited = reread = True
        if not woken and loop.time() >= deadline:
            break
    if waited and page.mutations:  # a key revoked meanwhile gets nothing it read
        await run_in_threadpool(keys.recheck, ctx.key_cache, key)
    if x_cairn_device is not None:  # read position: the cursor it pulled after (retention)
        ctx.seen.device_pulled(workspace, x_cairn_device, now_ms(), since)
    if page.mutations:  # metered and audited when it served something (not every long-poll)
        await run_in_threadpool(
            ctx.storage.record_pull, workspace, key.id, len(page.mutations), now_ms()
        )
    ctx.metrics.pulled(len(page.mutations), sum(len(m.payload) for m in page.mutations))
    binary = binary_pages.accepts(request.headers.get("accept"))
    return await run_in_threadpool(_page_response, page, binary)


@router.get(
    "/v1/sync/status",
    response_model=StatusOut,
    tags=["sync"],
    summary="This workspace's log, devices and key",
    responses=KEYED,
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


def _decode_batch(
    body: bytes, content_type: str | None, ctx: ServerContext, key: ApiKey
) -> tuple[Sequence[WireMutation], str]:
    """The checked mutations of a push body (JSON, or the binary form when its content type
    says so) and the workspace's mode; InvalidInput or MutationRejected otherwise.

    An end-to-end workspace takes sealed envelopes only, under no key id its keyring revoked;
    a hosted one, payloads its server can read.
    """
    if binary_pages.is_binary(content_type):
        return _checked(binary_pages.unpack_push(body), ctx, key)
    try:
        data = http_edge.decode_json(body)
    except ValueError as exc:
        raise InvalidInput(
            f'the request body is not valid JSON ({exc}); send {{"mutations": [...]}}'
        ) from exc
    if not isinstance(data, dict) or set(data) != {"mutations"}:
        raise InvalidInput('the request body must be a JSON object {"mutations": [...]}')
    return _checked(protocol.many_from_json(data["mutations"]), ctx, key)


def _checked(
    mutations: Sequence[WireMutation], ctx: ServerContext, key: ApiKey
) -> tuple[Sequence[WireMutation], str]:
    mode = ctx.storage.workspace_by_id(key.workspace_id).mode
    sealed = mode == protocol.E2E
    keyring = ctx.storage.keyring(key.workspace_id) if sealed else None
    protocol.check_batch(mutations, sealed, keyring.revoked if keyring else ())
    if not sealed:
        hosted.readable(mutations)
    return mutations, mode


def _page_response(page: PullPage, binary: bool) -> Response:
    """Encoded off the event loop: a page can hold megabytes. ``Vary``: the same URL answers
    JSON or the binary form by the Accept header, which a cache must key on."""
    if binary:
        body = binary_pages.pack_page(page.mutations, page.cursor, page.has_more)
        media_type = binary_pages.MEDIA_TYPE
    else:
        body = protocol.page_body(page.mutations, page.cursor, page.has_more)
        media_type = "application/json"
    return Response(body, media_type=media_type, headers={"Vary": "Accept"})
