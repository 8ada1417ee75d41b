"""The JSON shapes of the sync server, as pydantic models so /docs and /openapi.json show them.

The documented contract is the enforced one: every rule a request model states (patterns,
lengths, bounds) is a rule the server applies, and a request the schema calls valid is one the
server takes, but for what depends on state (a stale keyring version, a revoked key id, a payload
that is not a sealed envelope or, in a hosted workspace, not a readable one).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cairn.http_schemas import Text
from cairn.model import MAX_INT
from cairn.protocol import (
    HLC_PATTERN,
    ID_PATTERN,
    MAX_BATCH,
    MAX_PAYLOAD_BYTES,
    MAX_SEQ,
    SCOPE_PATTERN,
    VERSION,
)
from cairn.server import hosted, keys

BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
"""Standard base64 with its padding, as the server decodes it (strictly)."""
KEY_ID_PATTERN = r"^[0-9a-f]{12}$"

Scope = Literal["read", "write", "admin"]


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with the models it nests written in place: for a body the OpenAPI
    document describes by hand, whose ``$ref``s could not reach the schema's own ``$defs``."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MutationIn(BaseModel):
    """One mutation as a device pushes it (see ``cairn.protocol``); fields this version does
    not know are ignored (a later one may add some)."""

    model_config = ConfigDict(extra="allow")

    v: Literal[1] = Field(description=f"The envelope version ({VERSION}).")
    mutation_id: str = Field(pattern=ID_PATTERN, description="Unique; a repeat is a duplicate.")
    device_id: str = Field(pattern=ID_PATTERN)
    hlc: str = Field(pattern=HLC_PATTERN, description="The writer's hybrid logical clock.")
    entity_id: str = Field(pattern=ID_PATTERN, description="The memory or relation changed.")
    scope: str | None = Field(
        None, pattern=SCOPE_PATTERN, description="A blind scope tag, or null."
    )
    payload: str = Field(
        pattern=BASE64_PATTERN,
        max_length=(MAX_PAYLOAD_BYTES + 2) // 3 * 4,
        description="base64: a sealed envelope in an end-to-end workspace (its key id not "
        "revoked), the plain payload a device writes in a hosted one; else 422 with a code.",
    )
    seq: int | None = Field(
        None,
        ge=0,
        le=MAX_SEQ,
        description="Ignored on a push (the server assigns it), but refused outside its range.",
    )


class PushIn(_Request):
    mutations: list[MutationIn] = Field(max_length=MAX_BATCH)


class KeyringIn(_Request):
    blob: str = Field(
        pattern=BASE64_PATTERN,
        description="The keyring, base64 (the server reads only its clear id and key ids).",
    )
    expected_version: int | None = Field(
        None,
        ge=1,
        le=MAX_INT,
        description="The version this replaces (null: there is no keyring yet).",
    )
    revoked_key_ids: list[Annotated[int, Field(ge=0, le=0xFFFFFFFF)]] = Field(
        [],
        description="Key ids no new payload may be sealed under; pushes using them get 422 "
        "revoked_key. Earlier key ids of the keyring only, never its current one.",
        max_length=10_000,
    )
    signature: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{128}$",
        description="Ed25519 signature (hex) by the workspace's master key over the next "
        "version (cairn.keyring_rules.message); needed for every version after the first.",
    )
    verify_key: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="The key that checks it (hex)."
    )


class RollbackIn(_Request):
    version: int = Field(
        ge=1, le=MAX_INT, description="The earlier version to store again as the newest."
    )
    expected_version: int | None = Field(
        None, ge=1, le=MAX_INT, description="The newest version now (null: whatever it is)."
    )


class DeviceIn(_Request):
    device_id: str = Field(pattern=ID_PATTERN)
    name: str = Field(
        pattern=r"^[^\x00-\x1f\x7f-\x9f]*$",
        max_length=200,
        description="A name people recognise, e.g. a hostname (no control characters).",
    )


class EmbedIn(_Request):
    texts: list[Text] = Field(
        description=f"1 to {hosted.MAX_EMBED} texts (each at most 64 KiB of UTF-8).",
        min_length=1,
        max_length=hosted.MAX_EMBED,
    )


class KeyIn(_Request):
    name: str = Field(
        pattern=keys.NAME_PATTERN,
        max_length=keys.MAX_NAME,
        description="Who or what uses the key, e.g. a device or a person (no control "
        "characters, not blank).",
    )
    scopes: list[Scope] = Field(
        min_length=1, description="read, write and/or admin (admin > write > read)."
    )


# -- answers ------------------------------------------------------------------------------------


class PushOut(BaseModel):
    stored: int = Field(description="Mutations stored by this push.")
    duplicates: int = Field(description="Mutations already stored (ignored).")
    last_seq: int | None = Field(description="The highest seq the batch holds, if any.")


class MutationOut(BaseModel):
    v: int
    mutation_id: str
    device_id: str
    hlc: str
    entity_id: str
    scope: str | None
    payload: str = Field(description="base64, as pushed.")
    seq: int = Field(description="Its place in the workspace's log.")


class PullOut(BaseModel):
    mutations: list[MutationOut] = Field(description="In seq order.")
    next: str = Field(description="The `since` of the next page.")
    has_more: bool


class KeyInfo(BaseModel):
    id: str
    name: str
    scopes: list[Scope]


class StatusOut(BaseModel):
    workspace: str
    workspace_id: str
    mode: Literal["e2e", "hosted"]
    latest_seq: int
    mutations: int
    devices: int
    key: KeyInfo = Field(description="The key that asked.")


class QuotaOut(BaseModel):
    max_mutations: int | None
    max_bytes: int | None


class UsageDayOut(BaseModel):
    day: str = Field(description="YYYY-MM-DD (UTC).")
    pushes: int
    mutations: int
    bytes: int
    pulled: int
    recalls: int


class UsageOut(BaseModel):
    mutations: int
    stored_bytes: int
    entities: int
    memories: int
    quota: QuotaOut
    days: list[UsageDayOut] = Field(description="Newest first.")


class AuditEntryOut(BaseModel):
    at: str = Field(description="ISO-8601, UTC.")
    at_ms: int
    key_id: str | None
    action: str
    detail: dict[str, Any]


class AuditOut(BaseModel):
    entries: list[AuditEntryOut] = Field(description="Newest first.")
    next_before: int | None = Field(description="The `before` of the next page, if any.")


class EmbedOut(BaseModel):
    model_id: str
    dim: int
    vectors: list[list[float]]


class KeyringOut(BaseModel):
    blob: str = Field(description="base64.")
    version: int
    revoked_key_ids: list[int]
    signature: str | None = Field(None, description="Ed25519 signature (hex); null: unsigned.")
    verify_key: str | None = Field(None, description="The key that checks it (hex).")
    signed_version: int | None = Field(
        None, description="The version number the signature names (a rollback's copy keeps it)."
    )


class KeyringVersionOut(BaseModel):
    version: int


class DeviceOut(BaseModel):
    device_id: str
    name: str


class DeviceInfoOut(DeviceOut):
    first_seen: str
    last_seen: str
    pushed: int
    last_push_at: str | None
    last_pull_at: str | None


class DeviceRemovedOut(BaseModel):
    device_id: str
    removed: bool = Field(description="False when the workspace had no such device.")


class DevicesOut(BaseModel):
    devices: list[DeviceInfoOut] = Field(description="First seen first.")


class KeyOut(KeyInfo):
    created_at: str
    last_used_at: str | None
    revoked_at: str | None


class KeyCreatedOut(KeyOut):
    key: str = Field(description="The key itself: shown this once, never stored.")


class KeysOut(BaseModel):
    keys: list[KeyOut] = Field(description="Revoked ones included, oldest first.")
