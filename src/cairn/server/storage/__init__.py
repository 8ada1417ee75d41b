"""What the sync server needs from its database: one narrow interface, many backends.

One core (``core.SqlStorage``) holds every rule once, over a small dialect per database;
embedded SQLite (``sqlite``) and PostgreSQL (``postgres``) extend it, and pass the same tests
(``tests/server/test_storage.py``). Every method that touches a workspace's data takes its
``workspace_id``, and implementations filter every query by it: a workspace can never see
another's rows.

Contract for ``push``: one transaction, all-or-nothing; idempotent by ``mutation_id`` (a stored
mutation is counted as a duplicate and not stored again); sequence numbers are assigned per
workspace inside the write transaction, so commit order equals ``seq`` order and a pull of
``seq > since`` can never skip a mutation that commits later. Times are Unix milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from cairn.model import Filters, Memory, Relation
from cairn.protocol import E2E, KeyringBlob, KeyringProof, PullPage, PushResult, WireMutation
from cairn.replication import RelationState
from cairn.server.storage.lifecycle import Exported
from cairn.server.storage.records import (
    DAY_MS,
    INDEX_DIM,
    MEMORY_COLUMNS,
    SCOPES,
    ActivityHour,
    ApiKey,
    AuditEntry,
    Device,
    IndexedMemory,
    Quota,
    Ranked,
    ServerEvent,
    Totals,
    Usage,
    UsageDay,
    Workspace,
    WorkspaceStats,
    WorkspaceSummary,
    check_quota,
    day_of,
    keyring_of,
    keyring_proof_values,
    memory_of,
    memory_values,
)
from cairn.server.storage.retention import Compaction

__all__ = [
    "DAY_MS", "INDEX_DIM", "MEMORY_COLUMNS", "SCOPES", "ActivityHour", "ApiKey", "Compaction",
    "Exported", "AuditEntry", "Device", "IndexedMemory", "Quota", "Ranked", "ServerEvent",
    "Totals", "Usage", "UsageDay", "Workspace", "WorkspaceStats", "WorkspaceSummary",
    "check_quota", "day_of", "keyring_of", "keyring_proof_values", "memory_of",
    "memory_values", "ServerStorage",
]  # fmt: skip


class ServerStorage(Protocol):
    """The sync server's database; every method is safe to call from any thread."""

    fold_ahead: bool
    """Whether a fold may read the log's next page while it writes one: not where one writer
    at a time holds the whole database (pushes would wait behind page after page)."""

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

    def summaries(self) -> list[WorkspaceSummary]:
        """Every workspace with its latest seq, bytes stored and quota, oldest first."""
        ...

    def add_key(self, key: ApiKey) -> None:
        """Store a new key record (its id must be new)."""
        ...

    def find_key(self, key_id: str) -> ApiKey | None:
        """The key with this id in any workspace (how a request finds its workspace)."""
        ...

    def find_keys(self, key_ids: Sequence[str]) -> dict[str, ApiKey]:
        """The keys with these ids that exist, by id, in one read (a key cache's refresh)."""
        ...

    def keys(self, workspace_id: str) -> list[ApiKey]:
        """The workspace's keys, revoked ones included, oldest first."""
        ...

    def revoke_key(self, workspace_id: str, key_id: str, now: int) -> ApiKey:
        """Revoke a key of this workspace (again is a no-op); NotFound if it is not one."""
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

    def usage_days(self, workspace_id: str, days: int, now: int) -> list[UsageDay]:
        """``usage``'s last ``days`` days alone, newest first (without its counts of entities,
        which read the whole log)."""
        ...

    def summary(self, workspace_id: str) -> WorkspaceSummary:
        """The workspace with its latest seq, bytes stored and quota (one row read); NotFound
        if there is no such workspace."""
        ...

    def audit(
        self, workspace_id: str, key_id: str | None, action: str, detail: dict[str, Any], now: int
    ) -> None:
        """Add an entry to the workspace's audit log."""
        ...

    def audit_log(
        self,
        workspace_id: str,
        limit: int,
        before: int | None,
        action: str | None = None,
        key_id: str | None = None,
    ) -> list[AuditEntry]:
        """The workspace's audit entries, newest first (older than ``before`` if given; of
        this ``action`` and by this ``key_id`` if given)."""
        ...

    def activity(self, workspace_id: str, since: int) -> list[ActivityHour]:
        """Pushes, pulls and mutations stored per UTC hour from ``since`` on, oldest first
        (hours with none left out), as the audit log counts them."""
        ...

    def schema_version(self) -> int:
        """How many of its schema migrations the database has run."""
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

    def remove_device(self, workspace_id: str, device_id: str) -> bool:
        """Forget a device's record; False when there was none."""

    def record_seen(
        self,
        keys: Sequence[tuple[str, str, int]],
        devices: Sequence[tuple[str, str, int, int | None]],
    ) -> None:
        """In one transaction: each (workspace id, key id, time) as its key's last use, each
        (workspace id, device id, time, read position) as its device's last pull (added if
        unknown; a deleted workspace's are skipped). No time moves backwards."""
        ...

    def devices(self, workspace_id: str) -> list[Device]:
        """The workspace's devices, first seen first."""
        ...

    # -- a hosted workspace's search index: a projection of its log -------------------------

    def index_position(self, workspace_id: str) -> int:
        """The seq up to which the workspace's log is folded into its index (0: none)."""
        ...

    def index_lag(self, workspace_id: str) -> tuple[int, int]:
        """The index's position and the log's latest seq, read together (equal: nothing to
        fold); NotFound if there is no such workspace."""
        ...

    def indexed_payloads(self, workspace_id: str, memory_ids: Sequence[str]) -> dict[str, bytes]:
        """The indexed merged payload of each of these memories that the index holds."""
        ...

    def indexed_ids_with_prefix(self, workspace_id: str, prefix: str, limit: int = 2) -> list[str]:
        """Up to ``limit`` ids of indexed memories (forgotten ones too) starting with ``prefix``."""
        ...

    def indexed_relations_of(self, workspace_id: str, memory_id: str) -> list[Relation]:
        """The live relations from or to a memory, oldest first."""
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

    def nearest(
        self,
        workspace_id: str,
        vector: bytes,
        filters: Filters,
        depth: int,
    ) -> Ranked:
        """Up to ``depth`` live memories by cosine to ``vector``, highest first, as the index
        stands now (so at least what a fold that just returned wrote)."""
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

    def recalled(
        self, workspace_id: str, memory_ids: Sequence[str]
    ) -> tuple[dict[str, Memory], dict[str, str]]:
        """``indexed_memories``, and for each live one that a live memory supersedes, the
        newest such successor's id; in one read."""
        ...

    def list_indexed(
        self, workspace_id: str, filters: Filters, limit: int, offset: int
    ) -> tuple[list[Memory], int]:
        """Live memories, newest first, and how many match in all."""
        ...

    def older_indexed(
        self,
        workspace_id: str,
        filters: Filters,
        limit: int,
        before: tuple[int, str] | None = None,
    ) -> list[Memory]:
        """Up to ``limit`` live memories, newest first, created before ``before`` (a memory's
        ``(created_at, id)``: the last of the previous page); read through the index of
        creation times, so a page deep in the list costs what the first does (no count)."""
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

    # -- a workspace's lifecycle --------------------------------------------------------------

    def delete_workspace(self, workspace_id: str, now: int, by: str) -> dict[str, int]:
        """Delete the workspace and every row it owns (log, keyring versions, devices, keys,
        usage, audit, index) in one transaction, and note it in the server's audit log (as done
        ``by``); how many rows went from each table. NotFound, changing nothing, if there is no
        such workspace."""
        ...

    def import_workspace(
        self,
        workspace: Workspace,
        quota: Quota,
        latest_seq: int,
        records: Iterable[KeyringBlob | Device | WireMutation],
        now: int,
        by: str,
    ) -> dict[str, int]:
        """Add a workspace exported from another server, with its keyring versions, devices
        and mutations (their seqs kept) as ``records`` yields them, in one transaction, and
        note it in the server's audit log; how many of each. InvalidInput, adding nothing, if
        a workspace with its id or name exists, or a record repeats; whatever ``records``
        raises also adds nothing."""
        ...

    # -- log retention (``cairn.server.storage.retention``) ------------------------------------

    def set_retention(self, workspace_id: str, active_days: int | None) -> None:
        """Turn the workspace's retention policy on (a reader stays active ``active_days``
        after its last pull) or off (None); NotFound if there is no such workspace."""
        ...

    def retention(self, workspace_id: str) -> int | None:
        """The workspace's retention policy: its active days, or None (off)."""
        ...

    def retained(self) -> list[tuple[str, int]]:
        """Every workspace with a retention policy, and its active days."""
        ...

    def compact(
        self, workspace_id: str, now: int, active_days: int, by: str, key_id: str | None = None
    ) -> Compaction:
        """Drop the superseded mutations every reader active within ``active_days`` has read
        past, in one transaction, audited (as done ``by``); what it did."""
        ...

    def exported(self, workspace_id: str) -> AbstractContextManager[Exported]:
        """The workspace (its log's last seq, quota, keyring versions, devices and log) as one
        snapshot holds it, while the block runs; NotFound if there is no such workspace."""
        ...

    def server_events(self, limit: int) -> list[ServerEvent]:
        """The server's own audit log (workspaces deleted, imported), newest first."""
        ...

    def transactions(self) -> dict[str, int]:
        """Transactions begun since this storage opened, by access (``read``, ``write``): what
        the server costs its database, for ``/metrics``."""
        ...

    def close(self) -> None: ...
