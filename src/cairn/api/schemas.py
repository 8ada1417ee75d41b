"""The JSON shapes only the local HTTP API answers: a memory's detail, stats and sync state.

The memory bodies and answers it shares with the sync server's hosted routes are in
``cairn.http_schemas``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cairn.http_schemas import MemoryOut


class RelationOut(BaseModel):
    from_id: str
    to_id: str
    type: str = Field(description="supersedes, relates_to, contradicts or duplicate_of.")
    created_at: str


class MemoryDetailOut(MemoryOut):
    relations: list[RelationOut] = Field(description="Relations from and to this memory.")


class StatsOut(BaseModel):
    memories: int = Field(description="Live memories.")
    forgotten: int = Field(description="Tombstones.")
    by_kind: dict[str, int]
    by_project: dict[str, int]
    vectors_by_model: dict[str, int]
    relations: int
    outbox_pending: int = Field(description="Local changes not yet synced.")
    device_id: str | None
    path: str = Field(description="The store file.")
    bytes: int = Field(description="Size of the store file and its write-ahead log.")
    model_id: str = Field(description="The embedding model in use.")


class SyncWorkerOut(BaseModel):
    phase: Literal["idle", "pushing", "pulling", "healthy", "backoff", "degraded", "disabled"]
    reason: str | None = Field(
        description="A stable code when not healthy: unreachable, auth_failed, forbidden, "
        "quota_exceeded, key_mismatch, payload_too_large, dead_letter, rate_limited, "
        "sync_not_configured, other_worker, ..."
    )
    message: str = Field(description="What is happening, or what to do about it.")
    owner: str = Field(description="host:pid:role:id of the process whose worker reported.")
    worker_running: bool = Field(description="Whether that worker still holds the sync lease.")
    last_success_at: str | None
    retry_at: str | None = Field(description="In backoff: when the next try is due.")
    updated_at: str | None
    pending: int
    dead_letters: int


class SyncStatusOut(BaseModel):
    configured: bool = Field(description="False until `cairn sync setup` has run.")
    remote: str | None
    mode: str | None = Field(description="e2e (end-to-end encrypted) or hosted.")
    device_id: str
    pending: int = Field(description="Local changes not yet sent.")
    dead_letters: int = Field(description="Changes refused by the remote or unreadable.")
    conflicts: int = Field(description="Memories changed on two devices at once.")
    cursor: str | None
    last_push_at: str | None
    last_pull_at: str | None
    keyring: dict[str, str | int] | None = Field(
        None,
        description="Why the remote's newest keyring version is not in use (reason "
        "keyring_untrusted, the version, the one used instead, a message); null when it is.",
    )
    worker: SyncWorkerOut


StepCounts = dict[str, int | dict[str, int]]
"""A step's counts; a push's ``dead_letter_reasons`` maps each refusal reason to its count."""


class SyncNowOut(BaseModel):
    push: StepCounts | None = Field(None, description="Counts of the first push.")
    pull: StepCounts | None = Field(None, description="Counts of the pull.")
    push_after_pull: StepCounts | None = Field(
        None, description="Counts of the push of what the pull changed."
    )


class SyncSetupRequest(BaseModel):
    """Where to sync and how to open the workspace, as `cairn sync setup` takes them."""

    model_config = ConfigDict(extra="forbid")

    remote: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^(https?://|s3://|file:///|/)[^\x00-\x1f\x7f]*$",
        description="A sync server's http(s):// URL, s3://bucket/prefix, or a folder "
        "(file:///path or an absolute path).",
        examples=["file:///data/team-memory"],
    )
    passphrase: str | None = Field(
        None,
        max_length=1024,
        description="The workspace's passphrase (a new workspace's needs at least 8 "
        "characters); not needed with recovery_key or for a hosted workspace.",
    )
    recovery_key: str | None = Field(
        None, max_length=256, description="Join with the recovery key instead."
    )
    api_key: str | None = Field(
        None, max_length=256, description="An API key of the workspace (sync servers only)."
    )
    name: str | None = Field(
        None, max_length=100, description="This device's name (default: the host name)."
    )
    endpoint_url: str | None = Field(
        None, max_length=2048, description="An S3-compatible service's endpoint (s3:// only)."
    )
    create: bool = Field(False, description="Make the folder if it does not exist.")


class SyncSetupOut(BaseModel):
    remote: str
    workspace: str | None
    mode: str = Field(description="e2e (end-to-end encrypted) or hosted.")
    device_id: str
    device_name: str
    created_keyring: bool = Field(description="True when this device made the workspace.")
    recovery_key: str | None = Field(
        description="Shown once, when this device made the keyring: keep it somewhere safe."
    )
    key_store: str | None = Field(description="Where the workspace key is kept on this device.")
    pending: int = Field(description="Local changes waiting to be sent.")
    saved_to: str = Field(description="The file holding the sync settings.")
