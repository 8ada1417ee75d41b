"""What the sync server needs from its database: one narrow interface, many backends.

Embedded SQLite (``cairn.server.sqlite_storage``) and PostgreSQL (``cairn.server.pg_storage``)
implement it, and pass the same tests (``tests/server/test_storage.py``). Every method that
touches a workspace's data takes its ``workspace_id``, and implementations filter every query by
it: a workspace can never see another's rows.

Contract for ``push``: one transaction, all-or-nothing; idempotent by ``mutation_id`` (a stored
mutation is counted as a duplicate and not stored again); sequence numbers are assigned per
workspace inside the write transaction, so commit order equals ``seq`` order and a pull of
``seq > since`` can never skip a mutation that commits later.

Times are Unix milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cairn.errors import QuotaExceeded
from cairn.model import Filters, Memory
from cairn.protocol import E2E, KeyringBlob, KeyringProof, PullPage, PushResult, WireMutation
from cairn.replication import RelationState

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
class AuditEntry:
    """Who (which API key) did what, when."""

    at: int
    key_id: str | None
    action: str
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


class ServerStorage(Protocol):
    """The sync server's database; every method is safe to call from any thread."""

    @property
    def path(self) -> object:
        """Where the data is, for messages (a file, or a database URL without its password)."""
        ...

    def create_workspace(
        self, workspace_id: str, name: str, now: int, mode: str = E2E
    ) -> Workspace:
        """A new workspace (``mode`` e2e or hosted); InvalidInput if the name is taken."""
        ...

    def workspace(self, name: str) -> Workspace:
        """The workspace called ``name``; NotFound if there is none."""
        ...

    def workspace_by_id(self, workspace_id: str) -> Workspace:
        """The workspace with this id; NotFound if there is none."""
        ...

    def workspaces(self) -> list[Workspace]:
        """Every workspace, oldest first."""
        ...

    def add_key(self, key: ApiKey) -> None:
        """Store a new key record (its id must be new)."""
        ...

    def find_key(self, key_id: str) -> ApiKey | None:
        """The key with this id in any workspace (how a request finds its workspace)."""
        ...

    def keys(self, workspace_id: str) -> list[ApiKey]:
        """The workspace's keys, revoked ones included, oldest first."""
        ...

    def revoke_key(self, workspace_id: str, key_id: str, now: int) -> ApiKey:
        """Revoke a key of this workspace (again is a no-op); NotFound if it is not one."""
        ...

    def touch_key(self, workspace_id: str, key_id: str, now: int) -> None:
        """Record that the key was just used."""
        ...

    def push(
        self,
        workspace_id: str,
        mutations: Sequence[WireMutation],
        device_id: str | None,
        now: int,
        key_id: str | None = None,
    ) -> PushResult:
        """Store a checked batch all-or-nothing (see the module contract), count it in the
        day's usage and the audit log (as ``key_id``'s); QuotaExceeded, storing nothing, when
        it would take the workspace over its quota."""
        ...

    def record_pull(self, workspace_id: str, key_id: str, pulled: int, now: int) -> None:
        """Count ``pulled`` mutations served in the day's usage and the audit log."""
        ...

    def set_quota(self, workspace_id: str, quota: Quota) -> None:
        """Replace the workspace's quota (``Quota()``: none)."""
        ...

    def usage(self, workspace_id: str, days: int, now: int) -> Usage:
        """The workspace's totals, quota, and its last ``days`` days of usage."""
        ...

    def audit(
        self, workspace_id: str, key_id: str | None, action: str, detail: dict[str, Any], now: int
    ) -> None:
        """Add an entry to the workspace's audit log."""
        ...

    def audit_log(self, workspace_id: str, limit: int, before: int | None) -> list[AuditEntry]:
        """The workspace's audit entries, newest first (older than ``before`` if given)."""
        ...

    def pull(
        self,
        workspace_id: str,
        since: int,
        limit: int,
        scopes: Sequence[str] | None,
    ) -> PullPage:
        """Mutations with ``seq > since`` in seq order, as ``MemoryRemote.pull`` pages them."""
        ...

    def latest_seq(self, workspace_id: str) -> int:
        """The highest seq stored in the workspace (0 when empty)."""
        ...

    def stats(self, workspace_id: str) -> WorkspaceStats: ...

    def totals(self) -> Totals: ...

    def keyring(self, workspace_id: str) -> KeyringBlob | None:
        """The workspace's newest keyring version (None: none yet)."""
        ...

    def keyring_versions(self, workspace_id: str, limit: int) -> list[KeyringBlob]:
        """Up to ``limit`` of the workspace's keyring versions, newest first (all are kept)."""
        ...

    def put_keyring(
        self,
        workspace_id: str,
        blob: bytes,
        expected_version: int | None,
        revoked: Sequence[int] = (),
        proof: KeyringProof | None = None,
    ) -> int:
        """Add the next keyring version (its revoked key ids and proof, checked by the caller:
        ``cairn.keyring_rules.accept``) if the newest is ``expected_version`` (None: none yet);
        the new version, or RemoteConflict. Earlier versions stay."""
        ...

    def register_device(self, workspace_id: str, device_id: str, name: str, now: int) -> None:
        """Add or rename a device."""
        ...

    def touch_device(self, workspace_id: str, device_id: str, now: int, pulled: bool) -> None:
        """Record that the device was seen (and pulled, if ``pulled``); adds it if unknown."""
        ...

    def devices(self, workspace_id: str) -> list[Device]:
        """The workspace's devices, first seen first."""
        ...

    # -- a hosted workspace's search index: a projection of its log -------------------------

    def index_position(self, workspace_id: str) -> int:
        """The seq up to which the workspace's log is folded into its index (0: none)."""
        ...

    def indexed_payloads(self, workspace_id: str, memory_ids: Sequence[str]) -> dict[str, bytes]:
        """The indexed merged payload of each of these memories that the index holds."""
        ...

    def indexed_relations(self, workspace_id: str, keys: Sequence[str]) -> dict[str, RelationState]:
        """The indexed state of each of these relations (by ``RelationState.key``)."""
        ...

    def put_index(
        self,
        workspace_id: str,
        expected: int,
        position: int,
        memories: Sequence[IndexedMemory],
        relations: Sequence[RelationState],
    ) -> bool:
        """Write these rows and move the position from ``expected`` to ``position``, in one
        transaction; False, writing nothing, when the position is no longer ``expected``
        (another process folded that part of the log first)."""
        ...

    def nearest(self, workspace_id: str, vector: bytes, filters: Filters, depth: int) -> Ranked:
        """Up to ``depth`` live memories by cosine to ``vector``, highest first."""
        ...

    def keyword(
        self, workspace_id: str, terms: Sequence[Sequence[str]], filters: Filters, depth: int
    ) -> Ranked:
        """Up to ``depth`` live memories matching any of ``terms`` (each a phrase of
        tokens), best first by the backend's full-text rank."""
        ...

    def indexed_memories(self, workspace_id: str, memory_ids: Sequence[str]) -> dict[str, Memory]:
        """These memories as the index holds them (tombstones included)."""
        ...

    def successors(self, workspace_id: str, memory_ids: Sequence[str]) -> dict[str, str]:
        """For each id a live memory supersedes: the newest such successor's id."""
        ...

    def list_indexed(
        self, workspace_id: str, filters: Filters, limit: int, offset: int
    ) -> tuple[list[Memory], int]:
        """Live memories, newest first, and how many match in all."""
        ...

    def live_by_hash(self, workspace_id: str, project: str, content_hash: str) -> Memory | None:
        """The live memory of ``project`` with this content hash, if any."""
        ...

    def topic_head(self, workspace_id: str, project: str, topic_key: str) -> Memory | None:
        """The newest-created memory of ``project`` with this topic key, if any."""
        ...

    def record_recall(
        self, workspace_id: str, key_id: str, detail: dict[str, Any], now: int
    ) -> None:
        """Count a recall in the day's usage and the audit log."""
        ...

    def close(self) -> None: ...
