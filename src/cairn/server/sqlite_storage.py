"""The sync server's embedded database: one SQLite file (WAL), so `cairn server run` needs nothing.

Every write is one ``BEGIN IMMEDIATE`` transaction (``cairn.server.sqlite_db``): SQLite admits
one writer at a time, which is what makes per-workspace sequence numbers commit in order (a
reader can never see seq 8 before 7).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cairn.errors import InvalidInput, NotFound, RemoteConflict
from cairn.model import Filters, Memory
from cairn.protocol import (
    E2E,
    RELATION_PREFIX,
    KeyringBlob,
    KeyringProof,
    PullPage,
    PushResult,
    WireMutation,
)
from cairn.replication import RelationState
from cairn.server.sqlite_db import SqliteFile
from cairn.server.storage import (
    DAY_MS,
    INDEX_DIM,
    MEMORY_COLUMNS,
    ApiKey,
    AuditEntry,
    Device,
    IndexedMemory,
    Quota,
    Ranked,
    Totals,
    Usage,
    UsageDay,
    Workspace,
    WorkspaceStats,
    check_quota,
    day_of,
    keyring_of,
    keyring_proof_values,
    memory_of,
    memory_values,
)

MAX_SCOPES = 1000

# Numbered migrations: PRAGMA user_version is how many ran. Never edit one; add the next.
MIGRATIONS: tuple[str, ...] = (
    # 1: workspaces (with the last seq handed out), keys, the mutation log, devices, keyrings.
    """
    CREATE TABLE workspaces (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        mode TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        latest_seq INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        name TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        scopes TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        last_used_at INTEGER,
        revoked_at INTEGER
    );
    CREATE INDEX api_keys_workspace ON api_keys(workspace_id, created_at);
    CREATE TABLE mutations (
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        seq INTEGER NOT NULL,
        mutation_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        device_id TEXT NOT NULL,
        hlc TEXT NOT NULL,
        entity_id TEXT NOT NULL,
        scope TEXT,
        payload BLOB NOT NULL,
        received_at INTEGER NOT NULL,
        PRIMARY KEY (workspace_id, seq),
        UNIQUE (workspace_id, mutation_id)
    );
    CREATE TABLE devices (
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        device_id TEXT NOT NULL,
        name TEXT NOT NULL,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        pushed INTEGER NOT NULL DEFAULT 0,
        last_push_at INTEGER,
        last_pull_at INTEGER,
        PRIMARY KEY (workspace_id, device_id)
    );
    CREATE TABLE keyrings (
        workspace_id TEXT PRIMARY KEY REFERENCES workspaces(id),
        version INTEGER NOT NULL,
        blob BLOB NOT NULL
    );
    """,
    # 2: the key ids a keyring revoked (a JSON list), so pushes sealed under them are refused.
    """
    ALTER TABLE keyrings ADD COLUMN revoked TEXT NOT NULL DEFAULT '[]';
    """,
    # 3: metering (bytes stored, usage per day), quotas, and the audit log.
    """
    ALTER TABLE workspaces ADD COLUMN stored_bytes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE workspaces ADD COLUMN max_mutations INTEGER;
    ALTER TABLE workspaces ADD COLUMN max_bytes INTEGER;
    UPDATE workspaces SET stored_bytes = (
        SELECT COALESCE(SUM(length(payload)), 0) FROM mutations m
        WHERE m.workspace_id = workspaces.id
    );
    CREATE TABLE usage_days (
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        day TEXT NOT NULL,
        pushes INTEGER NOT NULL DEFAULT 0,
        mutations INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0,
        pulled INTEGER NOT NULL DEFAULT 0,
        recalls INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (workspace_id, day)
    );
    CREATE TABLE audit (
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        at INTEGER NOT NULL,
        key_id TEXT,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_at ON audit (workspace_id, at);
    """,
    # 4: hosted workspaces' search index, a projection of their log (cairn.server.hosted):
    # how far it has read, each memory's merged state with the fields searched, keyword search
    # (FTS5 kept in step by triggers, tombstones not indexed) and the relations.
    """
    CREATE TABLE hosted_index (
        workspace_id TEXT PRIMARY KEY REFERENCES workspaces(id),
        position INTEGER NOT NULL
    );
    CREATE TABLE hosted_memories (
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        id TEXT NOT NULL,
        content TEXT NOT NULL,
        kind TEXT NOT NULL,
        project TEXT NOT NULL,
        tags TEXT NOT NULL,
        topic_key TEXT,
        source TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        deleted INTEGER NOT NULL,
        content_hash TEXT NOT NULL,
        model_id TEXT,
        hlc TEXT NOT NULL,
        payload BLOB NOT NULL,
        vector BLOB,
        position INTEGER NOT NULL,
        PRIMARY KEY (workspace_id, id)
    );
    CREATE INDEX hosted_memories_position ON hosted_memories (workspace_id, position);
    CREATE INDEX hosted_memories_hash ON hosted_memories (workspace_id, project, content_hash);
    CREATE INDEX hosted_memories_topic ON hosted_memories
        (workspace_id, project, topic_key, created_at);
    CREATE INDEX hosted_memories_created ON hosted_memories (workspace_id, created_at);
    CREATE VIRTUAL TABLE hosted_fts USING fts5(
        content, content='hosted_memories', content_rowid='rowid',
        tokenize="porter unicode61 remove_diacritics 2 tokenchars '_'"
    );
    CREATE TRIGGER hosted_fts_insert AFTER INSERT ON hosted_memories WHEN new.deleted = 0 BEGIN
        INSERT INTO hosted_fts(rowid, content) VALUES (new.rowid, new.content);
    END;
    CREATE TRIGGER hosted_fts_update AFTER UPDATE OF content, deleted ON hosted_memories BEGIN
        INSERT INTO hosted_fts(hosted_fts, rowid, content)
            SELECT 'delete', old.rowid, old.content WHERE old.deleted = 0;
        INSERT INTO hosted_fts(rowid, content)
            SELECT new.rowid, new.content WHERE new.deleted = 0;
    END;
    CREATE TABLE hosted_relations (
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        from_id TEXT NOT NULL,
        to_id TEXT NOT NULL,
        type TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        deleted INTEGER NOT NULL,
        hlc TEXT NOT NULL,
        PRIMARY KEY (workspace_id, from_id, type, to_id)
    );
    CREATE INDEX hosted_relations_to ON hosted_relations (workspace_id, to_id, type);
    """,
    # 5: every keyring version is kept, with its proof (cairn.keyring_rules): the one stored
    # until now becomes its workspace's version of that number, without a proof.
    """
    CREATE TABLE keyring_versions (
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        version INTEGER NOT NULL,
        blob BLOB NOT NULL,
        revoked TEXT NOT NULL DEFAULT '[]',
        signature BLOB,
        verify_key BLOB,
        signed_version INTEGER,
        PRIMARY KEY (workspace_id, version)
    );
    INSERT INTO keyring_versions (workspace_id, version, blob, revoked)
        SELECT workspace_id, version, blob, revoked FROM keyrings;
    DROP TABLE keyrings;
    """,
)

_KEY_COLUMNS = "id, workspace_id, name, scopes, created_at, last_used_at, revoked_at, secret_hash"
_KEYRING_COLUMNS = "version, blob, revoked, signature, verify_key, signed_version"
_DEVICE_COLUMNS = "device_id, name, first_seen, last_seen, pushed, last_push_at, last_pull_at"


class SqliteStorage:
    """``ServerStorage`` over one SQLite file; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = SqliteFile(path, MIGRATIONS)
        self._vectors: dict[str, _Vectors] = {}
        self._vectors_lock = threading.Lock()

    # -- workspaces ---------------------------------------------------------------------------

    def create_workspace(
        self, workspace_id: str, name: str, now: int, mode: str = E2E
    ) -> Workspace:
        with self._db.write() as conn:
            if conn.execute("SELECT 1 FROM workspaces WHERE name = ?", (name,)).fetchone():
                raise InvalidInput(
                    f"a workspace named {name!r} already exists; pick another name "
                    "(`cairn server workspace list` shows them)"
                )
            conn.execute(
                "INSERT INTO workspaces (id, name, mode, created_at) VALUES (?, ?, ?, ?)",
                (workspace_id, name, mode, now),
            )
        return Workspace(workspace_id, name, mode, now)

    def workspace(self, name: str) -> Workspace:
        row = self._one("SELECT id, name, mode, created_at FROM workspaces WHERE name = ?", name)
        if row is None:
            raise NotFound(f"no workspace named {name!r}; `cairn server workspace list` shows them")
        return Workspace(*row)

    def workspace_by_id(self, workspace_id: str) -> Workspace:
        row = self._one(
            "SELECT id, name, mode, created_at FROM workspaces WHERE id = ?", workspace_id
        )
        if row is None:
            raise NotFound(f"no workspace with id {workspace_id!r}")
        return Workspace(*row)

    def workspaces(self) -> list[Workspace]:
        rows = self._all("SELECT id, name, mode, created_at FROM workspaces ORDER BY created_at")
        return [Workspace(*row) for row in rows]

    # -- API keys -----------------------------------------------------------------------------

    def add_key(self, key: ApiKey) -> None:
        with self._db.write() as conn:
            conn.execute(
                f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.id,
                    key.workspace_id,
                    key.name,
                    ",".join(key.scopes),
                    key.created_at,
                    key.last_used_at,
                    key.revoked_at,
                    key.secret_hash,
                ),
            )

    def find_key(self, key_id: str) -> ApiKey | None:
        # The one query not filtered by workspace: a request's key is how its workspace is known.
        row = self._one(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", key_id)
        return _key(row) if row else None

    def keys(self, workspace_id: str) -> list[ApiKey]:
        rows = self._all(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE workspace_id = ? ORDER BY created_at, id",
            workspace_id,
        )
        return [_key(row) for row in rows]

    def revoke_key(self, workspace_id: str, key_id: str, now: int) -> ApiKey:
        with self._db.write() as conn:
            conn.execute(
                "UPDATE api_keys SET revoked_at = ? "
                "WHERE workspace_id = ? AND id = ? AND revoked_at IS NULL",
                (now, workspace_id, key_id),
            )
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE workspace_id = ? AND id = ?",
                (workspace_id, key_id),
            ).fetchone()
        if row is None:
            raise NotFound(f"this workspace has no API key {key_id!r}; list them to check the id")
        return _key(row)

    def touch_key(self, workspace_id: str, key_id: str, now: int) -> None:
        with self._db.write() as conn:
            conn.execute(
                "UPDATE api_keys SET last_used_at = ? WHERE workspace_id = ? AND id = ?",
                (now, workspace_id, key_id),
            )

    # -- the mutation log ---------------------------------------------------------------------

    def push(
        self,
        workspace_id: str,
        mutations: Sequence[WireMutation],
        device_id: str | None,
        now: int,
        key_id: str | None = None,
    ) -> PushResult:
        with self._db.write() as conn:
            seq = self._latest(conn, workspace_id)
            stored = stored_bytes = 0
            for m in mutations:
                inserted = conn.execute(
                    "INSERT INTO mutations (workspace_id, seq, mutation_id, version, device_id, "
                    "hlc, entity_id, scope, payload, received_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (workspace_id, mutation_id) DO NOTHING",
                    (
                        workspace_id,
                        seq + 1,
                        m.mutation_id,
                        m.version,
                        m.device_id,
                        m.hlc,
                        m.entity_id,
                        m.scope,
                        m.payload,
                        now,
                    ),
                ).rowcount
                seq += inserted
                stored += inserted
                stored_bytes += len(m.payload) * inserted
            if stored:
                check_quota(
                    self._quota(conn, workspace_id),
                    seq,
                    stored_bytes + self._bytes(conn, workspace_id),
                )
                conn.execute(
                    "UPDATE workspaces SET latest_seq = ?, stored_bytes = stored_bytes + ? "
                    "WHERE id = ?",
                    (seq, stored_bytes, workspace_id),
                )
            conn.execute(
                "INSERT INTO usage_days (workspace_id, day, pushes, mutations, bytes) "
                "VALUES (?, ?, 1, ?, ?) ON CONFLICT (workspace_id, day) DO UPDATE SET "
                "pushes = pushes + 1, mutations = mutations + excluded.mutations, "
                "bytes = bytes + excluded.bytes",
                (workspace_id, day_of(now), stored, stored_bytes),
            )
            detail = {"stored": stored, "duplicates": len(mutations) - stored, "device": device_id}
            self._audit(conn, workspace_id, key_id, "push", detail, now)
            if device_id is not None:
                conn.execute(
                    "INSERT INTO devices (workspace_id, device_id, name, first_seen, last_seen, "
                    "pushed, last_push_at) VALUES (?, ?, '', ?, ?, ?, ?) "
                    "ON CONFLICT (workspace_id, device_id) DO UPDATE SET "
                    "last_seen = excluded.last_seen, pushed = pushed + excluded.pushed, "
                    "last_push_at = excluded.last_push_at",
                    (workspace_id, device_id, now, now, stored, now),
                )
        return PushResult(stored, len(mutations) - stored, seq)

    def pull(
        self,
        workspace_id: str,
        since: int,
        limit: int,
        scopes: Sequence[str] | None,
    ) -> PullPage:
        sql = (
            "SELECT seq, mutation_id, version, device_id, hlc, entity_id, scope, payload "
            "FROM mutations WHERE workspace_id = ? AND seq > ?"
        )
        args: list[Any] = [workspace_id, since]
        if scopes is not None:
            wanted = sorted(set(scopes))
            if len(wanted) > MAX_SCOPES:
                raise InvalidInput(f"a pull takes at most {MAX_SCOPES} scopes")
            marks = ", ".join("?" * len(wanted))
            sql += f" AND (scope IS NULL OR scope IN ({marks}))" if wanted else " AND scope IS NULL"
            args.extend(wanted)
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        # One snapshot for the page and the latest seq: the cursor cannot pass an unseen row.
        with self._db.read() as conn:
            latest = self._latest(conn, workspace_id)
            rows = conn.execute(sql, args).fetchall()
        page = [
            WireMutation(mid, device, hlc, entity, scope, bytes(payload), seq, version)
            for seq, mid, version, device, hlc, entity, scope, payload in rows
        ]
        last = page[-1].seq if len(page) == limit and page[-1].seq else latest
        return PullPage(page, str(last), last < latest)

    def latest_seq(self, workspace_id: str) -> int:
        with self._db.read() as conn:
            return self._latest(conn, workspace_id)

    def record_pull(self, workspace_id: str, key_id: str, pulled: int, now: int) -> None:
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO usage_days (workspace_id, day, pulled) VALUES (?, ?, ?) "
                "ON CONFLICT (workspace_id, day) DO UPDATE SET pulled = pulled + excluded.pulled",
                (workspace_id, day_of(now), pulled),
            )
            self._audit(conn, workspace_id, key_id, "pull", {"mutations": pulled}, now)

    # -- quotas, usage, audit -----------------------------------------------------------------

    def set_quota(self, workspace_id: str, quota: Quota) -> None:
        with self._db.write() as conn:
            self._latest(conn, workspace_id)
            conn.execute(
                "UPDATE workspaces SET max_mutations = ?, max_bytes = ? WHERE id = ?",
                (quota.max_mutations, quota.max_bytes, workspace_id),
            )

    def usage(self, workspace_id: str, days: int, now: int) -> Usage:
        with self._db.read() as conn:
            latest = self._latest(conn, workspace_id)
            entities, memories = conn.execute(
                "SELECT COUNT(DISTINCT entity_id), COUNT(DISTINCT CASE WHEN entity_id "
                f"NOT LIKE '{RELATION_PREFIX}%' THEN entity_id END) FROM mutations "
                "WHERE workspace_id = ?",
                (workspace_id,),
            ).fetchone()
            rows = conn.execute(
                "SELECT day, pushes, mutations, bytes, pulled, recalls FROM usage_days "
                "WHERE workspace_id = ? AND day >= ? ORDER BY day DESC",
                (workspace_id, day_of(now - (days - 1) * DAY_MS)),
            ).fetchall()
            return Usage(
                latest,
                self._bytes(conn, workspace_id),
                entities,
                memories,
                self._quota(conn, workspace_id),
                [UsageDay(*row) for row in rows],
            )

    def audit(
        self, workspace_id: str, key_id: str | None, action: str, detail: dict[str, Any], now: int
    ) -> None:
        with self._db.write() as conn:
            self._latest(conn, workspace_id)
            self._audit(conn, workspace_id, key_id, action, detail, now)

    def audit_log(self, workspace_id: str, limit: int, before: int | None) -> list[AuditEntry]:
        rows = self._all(
            "SELECT at, key_id, action, detail FROM audit WHERE workspace_id = ? AND at < ? "
            "ORDER BY at DESC, rowid DESC LIMIT ?",
            workspace_id,
            before if before is not None else 2**62,
            limit,
        )
        return [AuditEntry(at, key, action, json.loads(detail)) for at, key, action, detail in rows]

    def stats(self, workspace_id: str) -> WorkspaceStats:
        with self._db.read() as conn:
            latest = self._latest(conn, workspace_id)
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM mutations WHERE workspace_id = ?", (workspace_id,)
            ).fetchone()
            (devices,) = conn.execute(
                "SELECT COUNT(*) FROM devices WHERE workspace_id = ?", (workspace_id,)
            ).fetchone()
        return WorkspaceStats(latest, count, devices)

    def totals(self) -> Totals:
        row = self._one(
            "SELECT COUNT(*), COALESCE(SUM(latest_seq), 0), COALESCE(MAX(latest_seq), 0) "
            "FROM workspaces"
        )
        assert row is not None  # an aggregate always returns one row
        return Totals(*row)

    # -- keyring and devices ------------------------------------------------------------------

    def keyring(self, workspace_id: str) -> KeyringBlob | None:
        found = self.keyring_versions(workspace_id, 1)
        return found[0] if found else None

    def keyring_versions(self, workspace_id: str, limit: int) -> list[KeyringBlob]:
        rows = self._all(
            f"SELECT {_KEYRING_COLUMNS} FROM keyring_versions WHERE workspace_id = ? "
            "ORDER BY version DESC LIMIT ?",
            workspace_id,
            limit,
        )
        return [
            keyring_of(row, tuple(json.loads(row[2])), _blob(row[3]), _blob(row[4])) for row in rows
        ]

    def put_keyring(
        self,
        workspace_id: str,
        blob: bytes,
        expected_version: int | None,
        revoked: Sequence[int] = (),
        proof: KeyringProof | None = None,
    ) -> int:
        with self._db.write() as conn:
            self._latest(conn, workspace_id)  # NotFound for an unknown workspace
            row = conn.execute(
                "SELECT MAX(version) FROM keyring_versions WHERE workspace_id = ?",
                (workspace_id,),
            ).fetchone()
            current = row[0] if row else None
            if current != expected_version:
                raise RemoteConflict(
                    "the keyring changed on the server since it was read; read it again"
                )
            version = (current or 0) + 1
            conn.execute(
                f"INSERT INTO keyring_versions ({_KEYRING_COLUMNS}, workspace_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    version,
                    blob,
                    json.dumps(sorted(set(revoked))),
                    *keyring_proof_values(proof),
                    workspace_id,
                ),
            )
        return version

    def register_device(self, workspace_id: str, device_id: str, name: str, now: int) -> None:
        with self._db.write() as conn:
            self._latest(conn, workspace_id)
            conn.execute(
                "INSERT INTO devices (workspace_id, device_id, name, first_seen, last_seen) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (workspace_id, device_id) DO UPDATE SET "
                "name = excluded.name, last_seen = excluded.last_seen",
                (workspace_id, device_id, name, now, now),
            )

    def touch_device(self, workspace_id: str, device_id: str, now: int, pulled: bool) -> None:
        with self._db.write() as conn:
            self._latest(conn, workspace_id)
            conn.execute(
                "INSERT INTO devices (workspace_id, device_id, name, first_seen, last_seen, "
                "last_pull_at) VALUES (?, ?, '', ?, ?, ?) "
                "ON CONFLICT (workspace_id, device_id) DO UPDATE SET "
                "last_seen = excluded.last_seen, "
                "last_pull_at = COALESCE(excluded.last_pull_at, last_pull_at)",
                (workspace_id, device_id, now, now, now if pulled else None),
            )

    def devices(self, workspace_id: str) -> list[Device]:
        rows = self._all(
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE workspace_id = ? "
            "ORDER BY first_seen, device_id",
            workspace_id,
        )
        return [Device(*row) for row in rows]

    # -- a hosted workspace's search index ----------------------------------------------------

    def index_position(self, workspace_id: str) -> int:
        with self._db.read() as conn:
            return self._position(conn, workspace_id)

    def indexed_payloads(self, workspace_id: str, memory_ids: Sequence[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        with self._db.read() as conn:
            for start in range(0, len(memory_ids), 500):
                chunk = list(memory_ids[start : start + 500])
                rows = conn.execute(
                    "SELECT id, payload FROM hosted_memories WHERE workspace_id = ? "
                    f"AND id IN ({', '.join('?' * len(chunk))})",
                    [workspace_id, *chunk],
                )
                found.update((memory_id, bytes(payload)) for memory_id, payload in rows)
        return found

    def indexed_relations(self, workspace_id: str, keys: Sequence[str]) -> dict[str, RelationState]:
        found: dict[str, RelationState] = {}
        with self._db.read() as conn:
            for key in keys:
                from_id, type_, to_id = key.split("|", 2)
                row = conn.execute(
                    "SELECT created_at, deleted, hlc FROM hosted_relations WHERE workspace_id = ? "
                    "AND from_id = ? AND type = ? AND to_id = ?",
                    (workspace_id, from_id, type_, to_id),
                ).fetchone()
                if row:
                    found[key] = RelationState(from_id, to_id, type_, row[0], bool(row[1]), row[2])
        return found

    def put_index(
        self,
        workspace_id: str,
        expected: int,
        position: int,
        memories: Sequence[IndexedMemory],
        relations: Sequence[RelationState],
    ) -> bool:
        with self._db.write() as conn:
            if self._position(conn, workspace_id) != expected:
                return False
            conn.execute(
                "INSERT INTO hosted_index (workspace_id, position) VALUES (?, ?) "
                "ON CONFLICT (workspace_id) DO UPDATE SET position = excluded.position",
                (workspace_id, position),
            )
            conn.executemany(
                f"INSERT INTO hosted_memories (workspace_id, {MEMORY_COLUMNS}, payload, vector, "
                "position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (workspace_id, id) DO UPDATE SET content = excluded.content, "
                "kind = excluded.kind, project = excluded.project, tags = excluded.tags, "
                "topic_key = excluded.topic_key, source = excluded.source, "
                "created_at = excluded.created_at, updated_at = excluded.updated_at, "
                "deleted = excluded.deleted, content_hash = excluded.content_hash, "
                "model_id = excluded.model_id, hlc = excluded.hlc, payload = excluded.payload, "
                "vector = excluded.vector, position = excluded.position",
                [
                    (
                        workspace_id,
                        *memory_values(m.memory, json.dumps(list(m.memory.tags))),
                        m.payload,
                        m.vector,
                        position,
                    )
                    for m in memories
                ],
            )
            conn.executemany(
                "INSERT INTO hosted_relations (workspace_id, from_id, to_id, type, created_at, "
                "deleted, hlc) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (workspace_id, from_id, type, to_id) DO UPDATE SET "
                "created_at = excluded.created_at, deleted = excluded.deleted, hlc = excluded.hlc",
                [
                    (workspace_id, r.from_id, r.to_id, r.type, r.created_at, int(r.deleted), r.hlc)
                    for r in relations
                ],
            )
        return True

    def nearest(self, workspace_id: str, vector: bytes, filters: Filters, depth: int) -> Ranked:
        with self._vectors_lock:
            cache = self._vectors.setdefault(workspace_id, _Vectors())
        allowed = None
        with self._db.read() as conn:  # one snapshot: the cache and the filter agree
            cache.refresh(conn, workspace_id)
            if not filters.empty:
                where, params = _index_filter(filters)
                allowed = [
                    row[0]
                    for row in conn.execute(
                        f"SELECT m.id FROM hosted_memories m WHERE m.workspace_id = ? AND {where}",
                        [workspace_id, *params],
                    )
                ]
        return cache.search(np.frombuffer(vector, dtype="<f4"), depth, allowed)

    def keyword(
        self, workspace_id: str, terms: Sequence[Sequence[str]], filters: Filters, depth: int
    ) -> Ranked:
        match = " OR ".join('"' + " ".join(tokens) + '"' for tokens in terms if tokens)
        if not match:
            return []
        where, params = _index_filter(filters)
        rows = self._all(
            "SELECT m.id, bm25(hosted_fts) AS rank FROM hosted_fts "
            "JOIN hosted_memories m ON m.rowid = hosted_fts.rowid "
            f"WHERE hosted_fts MATCH ? AND m.workspace_id = ? AND {where} ORDER BY rank LIMIT ?",
            match,
            workspace_id,
            *params,
            depth,
        )
        return [(memory_id, -rank) for memory_id, rank in rows]

    def indexed_memories(self, workspace_id: str, memory_ids: Sequence[str]) -> dict[str, Memory]:
        found: dict[str, Memory] = {}
        with self._db.read() as conn:
            for start in range(0, len(memory_ids), 500):
                chunk = list(memory_ids[start : start + 500])
                rows = conn.execute(
                    f"SELECT {MEMORY_COLUMNS} FROM hosted_memories WHERE workspace_id = ? "
                    f"AND id IN ({', '.join('?' * len(chunk))})",
                    [workspace_id, *chunk],
                )
                found.update((row[0], memory_of(row, json.loads(row[4]))) for row in rows)
        return found

    def successors(self, workspace_id: str, memory_ids: Sequence[str]) -> dict[str, str]:
        if not memory_ids:
            return {}
        marks = ", ".join("?" * len(memory_ids))
        rows = self._all(
            "SELECT r.to_id, r.from_id FROM hosted_relations r JOIN hosted_memories m "
            "ON m.workspace_id = r.workspace_id AND m.id = r.from_id "
            "WHERE r.workspace_id = ? AND r.type = 'supersedes' AND r.deleted = 0 "
            f"AND m.deleted = 0 AND r.to_id IN ({marks}) ORDER BY r.created_at",
            workspace_id,
            *memory_ids,
        )
        return {to_id: from_id for to_id, from_id in rows}

    def list_indexed(
        self, workspace_id: str, filters: Filters, limit: int, offset: int
    ) -> tuple[list[Memory], int]:
        where, params = _index_filter(filters)
        sql = f"FROM hosted_memories m WHERE m.workspace_id = ? AND {where}"
        with self._db.read() as conn:
            (total,) = conn.execute(f"SELECT COUNT(*) {sql}", [workspace_id, *params]).fetchone()
            rows = conn.execute(
                f"SELECT {MEMORY_COLUMNS} {sql} ORDER BY m.created_at DESC, m.id DESC "
                "LIMIT ? OFFSET ?",
                [workspace_id, *params, limit, offset],
            ).fetchall()
        return [memory_of(row, json.loads(row[4])) for row in rows], int(total)

    def live_by_hash(self, workspace_id: str, project: str, content_hash: str) -> Memory | None:
        row = self._one(
            f"SELECT {MEMORY_COLUMNS} FROM hosted_memories WHERE workspace_id = ? "
            "AND project = ? AND content_hash = ? AND deleted = 0 ORDER BY id LIMIT 1",
            workspace_id,
            project,
            content_hash,
        )
        return memory_of(row, json.loads(row[4])) if row else None

    def topic_head(self, workspace_id: str, project: str, topic_key: str) -> Memory | None:
        row = self._one(
            f"SELECT {MEMORY_COLUMNS} FROM hosted_memories WHERE workspace_id = ? "
            "AND project = ? AND topic_key = ? ORDER BY created_at DESC, id DESC LIMIT 1",
            workspace_id,
            project,
            topic_key,
        )
        return memory_of(row, json.loads(row[4])) if row else None

    def record_recall(
        self, workspace_id: str, key_id: str, detail: dict[str, Any], now: int
    ) -> None:
        with self._db.write() as conn:
            self._latest(conn, workspace_id)
            conn.execute(
                "INSERT INTO usage_days (workspace_id, day, recalls) VALUES (?, ?, 1) "
                "ON CONFLICT (workspace_id, day) DO UPDATE SET recalls = recalls + 1",
                (workspace_id, day_of(now)),
            )
            self._audit(conn, workspace_id, key_id, "recall", detail, now)

    def close(self) -> None:
        self._db.close()

    # -- plumbing -----------------------------------------------------------------------------

    def _one(self, sql: str, *args: Any) -> Any:
        with self._db.read() as conn:
            return conn.execute(sql, args).fetchone()

    def _all(self, sql: str, *args: Any) -> list[Any]:
        with self._db.read() as conn:
            return conn.execute(sql, args).fetchall()

    @staticmethod
    def _audit(
        conn: sqlite3.Connection,
        workspace_id: str,
        key_id: str | None,
        action: str,
        detail: dict[str, Any],
        now: int,
    ) -> None:
        conn.execute(
            "INSERT INTO audit (workspace_id, at, key_id, action, detail) VALUES (?, ?, ?, ?, ?)",
            (workspace_id, now, key_id, action, json.dumps(detail, sort_keys=True)),
        )

    @staticmethod
    def _quota(conn: sqlite3.Connection, workspace_id: str) -> Quota:
        row = conn.execute(
            "SELECT max_mutations, max_bytes FROM workspaces WHERE id = ?", (workspace_id,)
        ).fetchone()
        return Quota(*row) if row else Quota()

    @staticmethod
    def _bytes(conn: sqlite3.Connection, workspace_id: str) -> int:
        row = conn.execute(
            "SELECT stored_bytes FROM workspaces WHERE id = ?", (workspace_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _position(conn: sqlite3.Connection, workspace_id: str) -> int:
        row = conn.execute(
            "SELECT position FROM hosted_index WHERE workspace_id = ?", (workspace_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _latest(conn: sqlite3.Connection, workspace_id: str) -> int:
        row = conn.execute(
            "SELECT latest_seq FROM workspaces WHERE id = ?", (workspace_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no workspace with id {workspace_id!r}")
        latest: int = row[0]
        return latest


class _Vectors:
    """One hosted workspace's vectors as a dense float32 matrix, for exact cosine search (as
    on a device: ``cairn.search.vector_index``). It follows the index by position: a refresh
    reads only the rows written since the last one, by this process or another."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._matrix = np.zeros((0, INDEX_DIM), dtype=np.float32)
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._seen = 0

    def refresh(self, conn: sqlite3.Connection, workspace_id: str) -> None:
        with self._lock:
            rows = conn.execute(
                "SELECT id, deleted, vector, position FROM hosted_memories "
                "WHERE workspace_id = ? AND position > ? ORDER BY position",
                (workspace_id, self._seen),
            ).fetchall()
            for memory_id, deleted, vector, position in rows:
                if deleted or vector is None or len(vector) != INDEX_DIM * 4:
                    self._remove(memory_id)
                else:
                    self._put(memory_id, np.frombuffer(vector, dtype="<f4"))
                self._seen = max(self._seen, position)

    def search(
        self, query: npt.NDArray[np.float32], depth: int, allowed: Sequence[str] | None
    ) -> Ranked:
        with self._lock:
            size = len(self._ids)
            if allowed is None:
                rows = np.arange(size)
            else:
                rows = np.fromiter(
                    (self._row[i] for i in allowed if i in self._row), dtype=np.int64
                )
            if not len(rows) or query.shape != (INDEX_DIM,):
                return []
            scores = (
                self._matrix[rows] @ query if allowed is not None else self._matrix[:size] @ query
            )
            take = min(depth, len(rows))
            top = np.argpartition(-scores, take - 1)[:take]
            top = top[np.argsort(-scores[top], kind="stable")]
            return [(self._ids[int(rows[i])], float(scores[i])) for i in top]

    def _put(self, memory_id: str, vector: npt.NDArray[np.float32]) -> None:
        row = self._row.get(memory_id)
        if row is None:
            row = len(self._ids)
            if row == len(self._matrix):  # grow by doubling
                grown = np.zeros((max(64, 2 * row), INDEX_DIM), dtype=np.float32)
                grown[:row] = self._matrix
                self._matrix = grown
            self._ids.append(memory_id)
            self._row[memory_id] = row
        self._matrix[row] = vector

    def _remove(self, memory_id: str) -> None:
        row = self._row.pop(memory_id, None)
        if row is None:
            return
        last = len(self._ids) - 1  # the last row moves into the hole
        if row != last:
            moved = self._ids[last]
            self._matrix[row] = self._matrix[last]
            self._ids[row] = moved
            self._row[moved] = row
        self._ids.pop()


def _index_filter(filters: Filters) -> tuple[str, list[Any]]:
    """The SQL (over ``hosted_memories m``) of live memories passing ``filters``."""
    clauses = ["m.deleted = 0"]
    params: list[Any] = []
    if filters.project is not None:
        clauses.append("m.project = ?")
        params.append(filters.project)
    if filters.kinds:
        clauses.append(f"m.kind IN ({', '.join('?' * len(filters.kinds))})")
        params.extend(filters.kinds)
    if filters.since_ms is not None:
        clauses.append("m.created_at >= ?")
        params.append(filters.since_ms)
    if filters.until_ms is not None:
        clauses.append("m.created_at < ?")
        params.append(filters.until_ms)
    for tag in filters.tags:
        clauses.append("EXISTS (SELECT 1 FROM json_each(m.tags) WHERE value = ?)")
        params.append(tag)
    return " AND ".join(clauses), params


def _blob(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def _key(row: Sequence[Any]) -> ApiKey:
    key_id, workspace_id, name, scopes, created, used, revoked, secret_hash = row
    return ApiKey(
        key_id, workspace_id, name, tuple(scopes.split(",")), created, used, revoked, secret_hash
    )
