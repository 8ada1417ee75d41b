"""The server storage's records and the rules on them that every backend shares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cairn.errors import QuotaExceeded
from cairn.model import Memory
from cairn.protocol import KeyringBlob, KeyringProof

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
INDEX_DIM = 384
"""Width of the vectors a hosted workspace's search index holds (the bundled model's)."""

SCOPES = ("read", "write", "admin")
"""API key scopes, weakest first: each one grants everything the ones before it grant."""


@dataclass(frozen=True)
class Workspace:
    """A tenant: its own mutation log, keyring, devices and API keys."""

    id: str
    name: str
    mode: str
    created_at: int


@dataclass(frozen=True)
class ApiKey:
    """An API key's record; the secret itself is never stored, only its SHA-256."""

    id: str
    workspace_id: str
    name: str
    scopes: tuple[str, ...]
    created_at: int
    last_used_at: int | None = None
    revoked_at: int | None = None
    secret_hash: str = field(default="", repr=False)


@dataclass(frozen=True)
class Device:
    """A device that registered or synced, with what it did last."""

    device_id: str
    name: str
    first_seen: int
    last_seen: int
    pushed: int = 0
    last_push_at: int | None = None
    last_pull_at: int | None = None
    read_position: int | None = None
    """The log seq it had read up to when it last pulled (log retention waits for it; None: not
    known)."""


@dataclass(frozen=True)
class WorkspaceStats:
    latest_seq: int
    mutations: int
    devices: int


@dataclass(frozen=True)
class Quota:
    """Limits an administrator set on a workspace (None: no limit)."""

    max_mutations: int | None = None
    max_bytes: int | None = None


@dataclass(frozen=True)
class WorkspaceSummary:
    """A workspace with what it holds and may hold, as its own row keeps them (cheap to list)."""

    workspace: Workspace
    latest_seq: int
    stored_bytes: int
    quota: Quota


@dataclass(frozen=True)
class UsageDay:
    """What a workspace did on one UTC day."""

    day: str  # YYYY-MM-DD
    pushes: int = 0
    mutations: int = 0
    bytes: int = 0
    pulled: int = 0
    recalls: int = 0


@dataclass(frozen=True)
class Usage:
    """A workspace's totals now, its quota, and its days (newest first)."""

    mutations: int
    stored_bytes: int
    entities: int
    memories: int
    """Memories among the entities (tombstones included); the rest are relations."""
    quota: Quota
    days: list[UsageDay]


@dataclass(frozen=True)
class ActivityHour:
    """What a workspace's devices did in one UTC hour."""

    hour: int
    """The hour's first millisecond."""
    pushes: int = 0
    pulls: int = 0
    mutations: int = 0
    """Mutations stored by those pushes (duplicates not counted)."""


@dataclass(frozen=True)
class AuditEntry:
    """Who (which API key) did what, when."""

    at: int
    key_id: str | None
    action: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class ServerEvent:
    """What an operator did to a whole workspace (deleted it, imported it), kept in the
    server's own audit log, which outlives the workspace."""

    at: int
    action: str
    workspace_id: str
    workspace_name: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class Totals:
    """Figures over every workspace, for metrics (no names: they may be private)."""

    workspaces: int
    mutations: int
    max_seq: int


@dataclass(frozen=True)
class IndexedMemory:
    """A hosted workspace's memory as its search index holds it: the merged state's payload
    (``cairn.sync.payload``, to merge the next change into) beside the fields searched.
    ``vector``: float32 of ``INDEX_DIM`` values, or None (keyword search only)."""

    memory: Memory
    payload: bytes
    vector: bytes | None


MEMORY_COLUMNS = (
    "id, content, kind, project, tags, topic_key, source, created_at, updated_at, deleted, "
    "content_hash, model_id, hlc"
)
"""The columns of an indexed memory, in the order ``memory_values`` and ``memory_of`` use."""


def memory_values(memory: Memory, tags: Any) -> tuple[Any, ...]:
    """A memory's values for ``MEMORY_COLUMNS``, its tags as the backend stores them."""
    m = memory
    head = (m.id, m.content, m.kind, m.project, tags, m.topic_key, m.source, m.created_at)
    return (*head, m.updated_at, m.deleted, m.content_hash, m.model_id, m.hlc)


def memory_of(row: Sequence[Any], tags: Sequence[str]) -> Memory:
    """The memory a ``MEMORY_COLUMNS`` row holds (``tags`` decoded by the backend)."""
    memory_id, content, kind, project, _, topic_key, source, created, updated = row[:9]
    deleted, content_hash, model_id, hlc = row[9:13]
    return Memory(
        memory_id,
        content,
        kind,
        project,
        tuple(tags),
        topic_key,
        source,
        int(created),
        int(updated),
        bool(deleted),
        content_hash,
        model_id,
        hlc,
    )


def keyring_of(
    row: Sequence[Any], revoked: tuple[int, ...], signature: bytes | None, key: bytes | None
) -> KeyringBlob:
    """The keyring version a row of (version, blob, revoked, signature, verify_key,
    signed_version) holds (the revoked ids, signature and key decoded by the backend)."""
    version, blob, signed = int(row[0]), bytes(row[1]), row[5]
    proof = None
    if signature is not None and key is not None:
        proof = KeyringProof(signature, key, int(signed if signed is not None else version))
    return KeyringBlob(blob, version, revoked, proof)


def keyring_proof_values(proof: KeyringProof | None) -> tuple[Any, Any, Any]:
    """A proof as the (signature, verify_key, signed_version) columns store it."""
    if proof is None:
        return None, None, None
    return proof.signature, proof.verify_key, proof.version


Ranked = list[tuple[str, float]]
"""Memory ids, best first, each with its score (cosine, or the keyword rank's score)."""


def day_of(ms: int) -> str:
    """The UTC day of a time, as usage is counted: YYYY-MM-DD."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def check_quota(quota: Quota, mutations: int, stored_bytes: int) -> None:
    """QuotaExceeded when a push would leave the workspace holding more than its quota."""
    if quota.max_mutations is not None and mutations > quota.max_mutations:
        raise QuotaExceeded(
            f"this workspace may hold {quota.max_mutations} changes and this push would make "
            f"it {mutations}; its administrator can raise the quota (`cairn server workspace "
            "set-quota`). Unsent changes wait on the device."
        )
    if quota.max_bytes is not None and stored_bytes > quota.max_bytes:
        raise QuotaExceeded(
            f"this workspace may hold {quota.max_bytes} bytes and this push would make it "
            f"{stored_bytes}; its administrator can raise the quota (`cairn server workspace "
            "set-quota`). Unsent changes wait on the device."
        )
