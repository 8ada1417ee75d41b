"""The sync server's keyring routes: read it and its versions, add a version, roll back."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import Query

from cairn import http_edge
from cairn.errors import InvalidInput, NotFound
from cairn.server import keyrings
from cairn.server.context import now_ms
from cairn.server.routes.common import (
    BODY,
    KEYED,
    Admin,
    Context,
    Reader,
    Writer,
    links,
    new_router,
)
from cairn.server.schemas import KeyringIn, KeyringOut, KeyringVersionOut, RollbackIn

_VERSION = "$response.body#/version"

router = new_router()


@router.get(
    "/v1/keyring",
    response_model=KeyringOut,
    tags=["keyring"],
    summary="The workspace's keyring blob",
    responses={
        200: links(Replace=("put_keyring", {"body": {"expected_version": _VERSION}})),
        **KEYED,
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
    responses={**KEYED, **http_edge.errors(422)},
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
        200: links(
            ReplaceAgain=("put_keyring", {"body": {"expected_version": _VERSION}}),
            Read=("get_keyring", {}),
        ),
        **KEYED,
        **BODY,
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
    responses={**KEYED, **BODY, **http_edge.errors(404, 409)},
)
def rollback_keyring(body: RollbackIn, ctx: Context, key: Admin) -> dict[str, Any]:
    """Stores an earlier version again as the next one, with its own proof; audited."""
    made = keyrings.rollback(
        ctx.storage, key.workspace_id, key.id, body.version, body.expected_version, now_ms()
    )
    return {"version": made.version, "restored": body.version}
