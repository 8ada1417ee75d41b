"""The sync server's routes for hosted workspaces: embed, and the memory verbs of the local API.

Remember, recall, list, get, edit and forget take the local HTTP API's bodies and give its
answers (``cairn.http_schemas``, ``cairn.views``); ``cairn.server.hosted`` does the work.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Response

from cairn import http_edge, model, views
from cairn.http_schemas import (
    EditRequest,
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
from cairn.memory_rules import MAX_LIMIT, MAX_OFFSET, NewMemory
from cairn.model import Filters
from cairn.server.context import ServerContext, now_ms
from cairn.server.routes.common import BODY, KEYED, Context, Reader, Writer, new_router
from cairn.server.schemas import EmbedIn, EmbedOut
from cairn.server.storage import ApiKey

router = new_router()


def _hosted(ctx: ServerContext, key: ApiKey) -> None:
    """409 not_hosted unless the key's workspace is hosted."""
    ctx.hosted.require(ctx.storage.workspace_by_id(key.workspace_id))


_NOT_HOSTED = http_edge.errors(409, e409="The workspace is end-to-end encrypted (not_hosted).")


@router.post(
    "/v1/embed",
    response_model=EmbedOut,
    tags=["hosted"],
    summary="Embed texts with the model devices use (hosted only)",
    responses={**KEYED, **BODY, **_NOT_HOSTED},
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
        **KEYED,
        **BODY,
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
    responses={**KEYED, **BODY, **_NOT_HOSTED},
    description=(
        "The local HTTP API's body and answer: semantic (pgvector HNSW on PostgreSQL, exact on "
        "SQLite) and full-text candidates fused by reciprocal rank, as on a device."
    ),
)
def recall(body: RecallRequest, ctx: Context, key: Reader) -> Any:
    _hosted(ctx, key)
    filters = Filters.parse(body.project, body.kinds, body.tags, body.since, body.until)
    hits = ctx.hosted.recall(key.workspace_id, key.id, body.query, filters, body.limit, now_ms())
    return views.recalled(hits)


@router.get(
    "/v1/memories",
    response_model=ListOut,
    tags=["hosted"],
    summary="List memories, newest first (hosted only)",
    responses={**KEYED, **http_edge.errors(422), **_NOT_HOSTED},
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
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Any:
    _hosted(ctx, key)
    filters = Filters.parse(project, kind or [], tag or [], since, until)
    found, total = ctx.hosted.list(key.workspace_id, filters, limit, offset)
    return views.page(found, total)


@router.get(
    "/v1/memories/{memory_id}",
    response_model=MemoryOut,
    tags=["hosted"],
    summary="Get a memory by its full id (hosted only)",
    responses={**KEYED, **http_edge.errors(404, 422), **_NOT_HOSTED},
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
    responses={**KEYED, **BODY, **http_edge.errors(404), **_NOT_HOSTED},
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
    responses={**KEYED, **http_edge.errors(404, 422), **_NOT_HOSTED},
)
def forget_memory(memory_id: str, ctx: Context, key: Writer) -> Any:
    _hosted(ctx, key)
    memory = ctx.hosted.forget(key.workspace_id, key.id, memory_id, now_ms())
    ctx.notifier.notify(key.workspace_id)
    return memory.to_dict()
