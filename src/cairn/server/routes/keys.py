"""The sync server's API key routes: create a key (shown once), list them, revoke one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path

from cairn import http_edge
from cairn.server import keys
from cairn.server.context import now_ms
from cairn.server.routes.common import BODY, KEYED, Admin, Context, links, new_router
from cairn.server.schemas import KEY_ID_PATTERN, KeyCreatedOut, KeyIn, KeyOut, KeysOut

_AS_THE_NEW_KEY = {"header.Authorization": "Bearer {$response.body#/key}"}

router = new_router()


@router.post(
    "/v1/auth/keys",
    status_code=201,
    response_model=KeyCreatedOut,
    tags=["keys"],
    summary="Create an API key",
    response_description="Created.",
    responses={
        201: links(
            StatusWithIt=("status", dict(_AS_THE_NEW_KEY)),
            PushWithIt=("push", dict(_AS_THE_NEW_KEY)),
            PullWithIt=("pull", dict(_AS_THE_NEW_KEY)),
            RevokeIt=("revoke_key", {"path.key_id": "$response.body#/id"}),
        ),
        **KEYED,
        **BODY,
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
    responses=KEYED,
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
        **KEYED,
        **http_edge.errors(422),
        **http_edge.errors(404, e404="The workspace has no such key (not_found)."),
    },
)
def revoke_key(
    key_id: Annotated[str, Path(pattern=KEY_ID_PATTERN)], ctx: Context, key: Admin
) -> dict[str, Any]:
    revoked = ctx.storage.revoke_key(key.workspace_id, key_id, now_ms())
    ctx.key_revoked(key_id)
    ctx.storage.audit(key.workspace_id, key.id, "key_revoke", {"revoked": key_id}, now_ms())
    return keys.to_json(revoked)
