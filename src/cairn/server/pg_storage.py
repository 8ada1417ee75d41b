"""The sync server's PostgreSQL storage: many stateless app processes over one database.

``cairn server run --db postgresql://user@host/db`` (or ``CAIRN_SERVER_DB``) uses it instead of
the embedded SQLite file. psycopg 3 with a connection pool; numbered migrations, applied under an
advisory lock so several app processes starting at once migrate once.

Sequence numbers: a push locks its workspace's row (``SELECT ... FOR NO KEY UPDATE``) for the
length of its transaction, numbers the new mutations from the ``latest_seq`` it read, and writes
both before it commits. Pushes to one workspace therefore commit one at a time in seq order, and a
pull reads the rows and ``latest_seq`` in one snapshot (REPEATABLE READ): it can never see seq 8
without 7, nor hand out a cursor past a mutation that commits later. A push that fails rolls
back its numbers with it, so sequences stay gapless.

Tenancy, twice over: every query filters by ``workspace_id``, and row-level security (forced,
so it binds the tables' owner too) lets a transaction see only the rows of the workspace it
declared (``SET LOCAL cairn.workspace_id``). A query that forgot its filter still returns one
workspace's rows. Only the few cross-workspace reads (finding a request's API key, listing
workspaces, totals for metrics) declare ``*``. The app must connect as a role that is not a
superuser (superusers bypass row-level security); ``compose.yaml`` does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from cairn.errors import InvalidInput, NotFound, RemoteConflict, SchemaTooNew, StoreError
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
ALL = "*"
"""The workspace a cross-workspace read declares (key lookup, workspace list, totals)."""
_TENANT = "current_setting('cairn.workspace_id', true)"
_NO_FLUSH = "SET LOCAL synchronous_commit = off"
"""For metering a read (a pull, a recall): the reader does not wait for the WAL flush. A crash
may lose the last few hundred ms of such counts and audit entries, never a stored change."""
_MIGRATE_LOCK = 7_351_100  # pg_advisory_xact_lock key: one migrator at a time

# Numbered migrations: cairn_schema.version is how many ran. Never edit one; add the next.
MIGRATIONS: tuple[str, ...] = (
    # 1: the same tables as the embedded store, and row-level security on every one of them.
    f"""
    CREATE TABLE workspaces (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        mode TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        latest_seq BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        name TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        scopes TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        last_used_at BIGINT,
        revoked_at BIGINT
    );
    CREATE INDEX api_keys_workspace ON api_keys (workspace_id, created_at);
    CREATE TABLE mutations (
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        seq BIGINT NOT NULL,
        mutation_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        device_id TEXT NOT NULL,
        hlc TEXT NOT NULL,
        entity_id TEXT NOT NULL,
        scope TEXT,
        payload BYTEA NOT NULL,
        received_at BIGINT NOT NULL,
        PRIMARY KEY (workspace_id, seq),
        UNIQUE (workspace_id, mutation_id)
    );
    CREATE TABLE devices (
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        device_id TEXT NOT NULL,
        name TEXT NOT NULL,
        first_seen BIGINT NOT NULL,
        last_seen BIGINT NOT NULL,
        pushed BIGINT NOT NULL DEFAULT 0,
        last_push_at BIGINT,
        last_pull_at BIGINT,
        PRIMARY KEY (workspace_id, device_id)
    );
    CREATE TABLE keyrings (
        workspace_id TEXT PRIMARY KEY REFERENCES workspaces(id),
        version INTEGER NOT NULL,
        blob BYTEA NOT NULL,
        revoked INTEGER[] NOT NULL DEFAULT '{{}}'
    );
    ALTER TABLE workspaces ENABLE ROW LEVEL SECURITY;
    ALTER TABLE workspaces FORCE ROW LEVEL SECURITY;
    CREATE POLICY tenant ON workspaces USING (id = {_TENANT} OR {_TENANT} = '{ALL}');
    """
    + "".join(
        f"""
    ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
    ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
    CREATE POLICY tenant ON {table}
        USING (workspace_id = {_TENANT} OR {_TENANT} = '{ALL}');
    """
        for table in ("api_keys", "mutations", "devices", "keyrings")
    ),
    # 2: metering (bytes stored, usage per day), quotas, and the audit log.
    """
    ALTER TABLE workspaces ADD COLUMN stored_bytes BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE workspaces ADD COLUMN max_mutations BIGINT;
    ALTER TABLE workspaces ADD COLUMN max_bytes BIGINT;
    UPDATE workspaces SET stored_bytes = (
        SELECT COALESCE(SUM(length(payload)), 0) FROM mutations m
        WHERE m.workspace_id = workspaces.id
    );
    CREATE TABLE usage_days (
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        day TEXT NOT NULL,
        pushes BIGINT NOT NULL DEFAULT 0,
        mutations BIGINT NOT NULL DEFAULT 0,
        bytes BIGINT NOT NULL DEFAULT 0,
        pulled BIGINT NOT NULL DEFAULT 0,
        recalls BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (workspace_id, day)
    );
    CREATE TABLE audit (
        id BIGSERIAL PRIMARY KEY,
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        at BIGINT NOT NULL,
        key_id TEXT,
        action TEXT NOT NULL,
        detail JSONB NOT NULL
    );
    CREATE INDEX audit_at ON audit (workspace_id, at);
    """
    + "".join(
        f"""
    ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
    ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
    CREATE POLICY tenant ON {table}
        USING (workspace_id = {_TENANT} OR {_TENANT} = '{ALL}');
    """
        for table in ("usage_days", "audit")
    ),
    # 3: hosted workspaces' search index, a projection of their log (cairn.server.hosted): how
    # far it has read, each memory's merged state with the fields searched, a pgvector HNSW
    # index (cosine) and a full-text index, and the relations.
    f"""
    CREATE EXTENSION IF NOT EXISTS vector;
    CREATE TABLE hosted_index (
        workspace_id TEXT PRIMARY KEY REFERENCES workspaces(id),
        position BIGINT NOT NULL
    );
    CREATE TABLE hosted_memories (
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        id TEXT NOT NULL,
        content TEXT NOT NULL,
        kind TEXT NOT NULL,
        project TEXT NOT NULL,
        tags TEXT[] NOT NULL,
        topic_key TEXT,
        source TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        deleted BOOLEAN NOT NULL,
        content_hash TEXT NOT NULL,
        model_id TEXT,
        hlc TEXT NOT NULL,
        payload BYTEA NOT NULL,
        embedding vector({INDEX_DIM}),
        words tsvector GENERATED ALWAYS AS
            (to_tsvector('english'::regconfig, CASE WHEN deleted THEN '' ELSE content END))
            STORED,
        position BIGINT NOT NULL,
        PRIMARY KEY (workspace_id, id)
    );
    CREATE INDEX hosted_memories_embedding ON hosted_memories
        USING hnsw (embedding vector_cosine_ops);
    CREATE INDEX hosted_memories_words ON hosted_memories USING gin (words);
    CREATE INDEX hosted_memories_hash ON hosted_memories (workspace_id, project, content_hash);
    CREATE INDEX hosted_memories_topic ON hosted_memories
        (workspace_id, project, topic_key, created_at);
    CREATE INDEX hosted_memories_created ON hosted_memories (workspace_id, created_at);
    CREATE TABLE hosted_relations (
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        from_id TEXT NOT NULL,
        to_id TEXT NOT NULL,
        type TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        deleted BOOLEAN NOT NULL,
        hlc TEXT NOT NULL,
        PRIMARY KEY (workspace_id, from_id, type, to_id)
    );
    CREATE INDEX hosted_relations_to ON hosted_relations (workspace_id, to_id, type);
    """
    + "".join(
        f"""
    ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
    ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
    CREATE POLICY tenant ON {table}
        USING (workspace_id = {_TENANT} OR {_TENANT} = '{ALL}');
    """
        for table in ("hosted_index", "hosted_memories", "hosted_relations")
    ),
    # 4: every keyring version is kept, with its proof (cairn.keyring_rules): the one stored
    # until now becomes its workspace's version of that number, without a proof.
    f"""
    CREATE TABLE keyring_versions (
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        version INTEGER NOT NULL,
        blob BYTEA NOT NULL,
        revoked INTEGER[] NOT NULL DEFAULT '{{}}',
        signature BYTEA,
        verify_key BYTEA,
        signed_version INTEGER,
        PRIMARY KEY (workspace_id, version)
    );
    ALTER TABLE keyring_versions ENABLE ROW LEVEL SECURITY;
    ALTER TABLE keyring_versions FORCE ROW LEVEL SECURITY;
    CREATE POLICY tenant ON keyring_versions
        USING (workspace_id = {_TENANT} OR {_TENANT} = '{ALL}');
    INSERT INTO keyring_versions (workspace_id, version, blob, revoked)
        SELECT workspace_id, version, blob, revoked FROM keyrings;
    DROP TABLE keyrings;
    """,
)
EF_SEARCH = 100
"""HNSW candidates examined per query (pgvector's default, 40, is under recall's depth of 50)."""
MAX_EF_SEARCH = 1000
"""pgvector's ceiling for hnsw.ef_search; deeper recalls rely on its iterative scan for more.
(A recall of limit 1000 asks for depth 4000: setting that was an error, a 500.)"""

_KEY_COLUMNS = "id, workspace_id, name, scopes, created_at, last_used_at, revoked_at, secret_hash"
_KEYRING_COLUMNS = "version, blob, revoked, signature, verify_key, signed_version"
_DEVICE_COLUMNS = "device_id, name, first_seen, last_seen, pushed, last_push_at, last_pull_at"
_MUTATION_COLUMNS = (
    "workspace_id, seq, mutation_id, version, device_id, hlc, entity_id, scope, payload, "
    "received_at"
)


class PostgresStorage:
    """``ServerStorage`` over a PostgreSQL database; safe to share between threads."""

    def __init__(self, url: str, min_size: int = 1, max_size: int = 8) -> None:
        self.path = _redacted(url)
        """Where the data is, for messages (the password left out)."""
        try:  # one plain connection first: a wrong URL fails fast, with PostgreSQL's reason
            psycopg.connect(url, connect_timeout=10).close()
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(
                f"cannot connect to PostgreSQL at {self.path}: {reason}; check --db "
                "(postgresql://user:password@host:5432/database) and that the server runs"
            ) from exc
        self._pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=30,
            open=False,
            kwargs={"autocommit": False},
        )
        try:
            self._pool.open(wait=True, timeout=30)
        except PoolTimeout as exc:
            self._pool.close()
            raise StoreError(
                f"cannot connect to PostgreSQL at {self.path} within 30 s; check --db "
                "(postgresql://user:password@host:5432/database) and that the server runs"
            ) from exc
        self._migrate()

    # -- workspaces ---------------------------------------------------------------------------

    def create_workspace(
        self, workspace_id: str, name: str, now: int, mode: str = E2E
    ) -> Workspace:
        try:
            with self._tx(ALL) as conn:
                taken = conn.execute("SELECT 1 FROM workspaces WHERE name = %s", (name,))
                if taken.fetchone() is None:
                    conn.execute(
                        "INSERT INTO workspaces (id, name, mode, created_at) "
                        "VALUES (%s, %s, %s, %s)",
                        (workspace_id, name, mode, now),
                    )
                    return Workspace(workspace_id, name, mode, now)
        except pg_errors.UniqueViolation:
            pass  # another process created it at the same moment
        raise InvalidInput(
            f"a workspace named {name!r} already exists; pick another name "
            "(`cairn server workspace list` shows them)"
        )

    def workspace(self, name: str) -> Workspace:
        row = self._one(
            ALL, "SELECT id, name, mode, created_at FROM workspaces WHERE name = %s", name
        )
        if row is None:
            raise NotFound(f"no workspace named {name!r}; `cairn server workspace list` shows them")
        return Workspace(*row)

    def workspace_by_id(self, workspace_id: str) -> Workspace:
        row = self._one(
            workspace_id,
            "SELECT id, name, mode, created_at FROM workspaces WHERE id = %s",
            workspace_id,
        )
        if row is None:
            raise NotFound(f"no workspace with id {workspace_id!r}")
        return Workspace(*row)

    def workspaces(self) -> list[Workspace]:
        rows = self._all(
            ALL, "SELECT id, name, mode, created_at FROM workspaces ORDER BY created_at, id"
        )
        return [Workspace(*row) for row in rows]

    # -- API keys -----------------------------------------------------------------------------

    def add_key(self, key: ApiKey) -> None:
        with self._tx(key.workspace_id) as conn:
            conn.execute(
                f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
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
        # The one lookup across workspaces: a request's key is how its workspace is known.
        row = self._one(ALL, f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = %s", key_id)
        return _key(row) if row else None

    def keys(self, workspace_id: str) -> list[ApiKey]:
        rows = self._all(
            workspace_id,
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE workspace_id = %s ORDER BY created_at, id",
            workspace_id,
        )
        return [_key(row) for row in rows]

    def revoke_key(self, workspace_id: str, key_id: str, now: int) -> ApiKey:
        with self._tx(workspace_id) as conn:
            conn.execute(
                "UPDATE api_keys SET revoked_at = %s "
                "WHERE workspace_id = %s AND id = %s AND revoked_at IS NULL",
                (now, workspace_id, key_id),
            )
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE workspace_id = %s AND id = %s",
                (workspace_id, key_id),
            ).fetchone()
        if row is None:
            raise NotFound(f"this workspace has no API key {key_id!r}; list them to check the id")
        return _key(row)

    def touch_key(self, workspace_id: str, key_id: str, now: int) -> None:
        with self._tx(workspace_id) as conn:
            conn.execute(
                "UPDATE api_keys SET last_used_at = %s WHERE workspace_id = %s AND id = %s",
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
        with self._tx(workspace_id) as conn:
            seq = self._latest(conn, workspace_id, lock=True)
            ids = list({m.mutation_id for m in mutations})
            stored_ids = {
                row[0]
                for row in conn.execute(
                    "SELECT mutation_id FROM mutations "
                    "WHERE workspace_id = %s AND mutation_id = ANY(%s)",
                    (workspace_id, ids),
                )
            }
            rows = []
            for m in mutations:
                if m.mutation_id in stored_ids:
                    continue
                stored_ids.add(m.mutation_id)
                seq += 1
                rows.append(
                    (workspace_id, seq, m.mutation_id, m.version, m.device_id, m.hlc)
                    + (m.entity_id, m.scope, m.payload, now)
                )
            added = sum(len(row[8]) for row in rows)  # the payloads' bytes
            if rows:  # pipelined; COPY would be faster but row-level security forbids it
                held = self._bytes(conn, workspace_id) + added
                check_quota(self._quota(conn, workspace_id), seq, held)
                conn.cursor().executemany(
                    f"INSERT INTO mutations ({_MUTATION_COLUMNS}) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    rows,
                )
                conn.execute(
                    "UPDATE workspaces SET latest_seq = %s, stored_bytes = stored_bytes + %s "
                    "WHERE id = %s",
                    (seq, added, workspace_id),
                )
            conn.execute(
                "INSERT INTO usage_days (workspace_id, day, pushes, mutations, bytes) "
                "VALUES (%s, %s, 1, %s, %s) ON CONFLICT (workspace_id, day) DO UPDATE SET "
                "pushes = usage_days.pushes + 1, "
                "mutations = usage_days.mutations + excluded.mutations, "
                "bytes = usage_days.bytes + excluded.bytes",
                (workspace_id, day_of(now), len(rows), added),
            )
            detail = {
                "stored": len(rows),
                "duplicates": len(mutations) - len(rows),
                "device": device_id,
            }
            self._audit(conn, workspace_id, key_id, "push", detail, now)
            if device_id is not None:
                conn.execute(
                    "INSERT INTO devices (workspace_id, device_id, name, first_seen, last_seen, "
                    "pushed, last_push_at) VALUES (%s, %s, '', %s, %s, %s, %s) "
                    "ON CONFLICT (workspace_id, device_id) DO UPDATE SET "
                    "last_seen = excluded.last_seen, pushed = devices.pushed + excluded.pushed, "
                    "last_push_at = excluded.last_push_at",
                    (workspace_id, device_id, now, now, len(rows), now),
                )
        return PushResult(len(rows), len(mutations) - len(rows), seq)

    def pull(
        self,
        workspace_id: str,
        since: int,
        limit: int,
        scopes: Sequence[str] | None,
    ) -> PullPage:
        sql = (
            "SELECT seq, mutation_id, version, device_id, hlc, entity_id, scope, payload "
            "FROM mutations WHERE workspace_id = %s AND seq > %s"
        )
        args: list[Any] = [workspace_id, since]
        if scopes is not None:
            wanted = sorted(set(scopes))
            if len(wanted) > MAX_SCOPES:
                raise InvalidInput(f"a pull takes at most {MAX_SCOPES} scopes")
            sql += " AND (scope IS NULL OR scope = ANY(%s))"
            args.append(wanted)
        sql += " ORDER BY seq LIMIT %s"
        args.append(limit)
        # One snapshot for the page and the latest seq: the cursor cannot pass an unseen row.
        with self._tx(workspace_id, snapshot=True) as conn:
            latest = self._latest(conn, workspace_id)
            rows = conn.execute(sql, args).fetchall()
        page = [
            WireMutation(mid, device, hlc, entity, scope, bytes(payload), seq, version)
            for seq, mid, version, device, hlc, entity, scope, payload in rows
        ]
        last = page[-1].seq if len(page) == limit and page[-1].seq else latest
        return PullPage(page, str(last), last < latest)

    def latest_seq(self, workspace_id: str) -> int:
        with self._tx(workspace_id) as conn:
            return self._latest(conn, workspace_id)

    def record_pull(self, workspace_id: str, key_id: str, pulled: int, now: int) -> None:
        with self._tx(workspace_id) as conn:
            conn.execute(_NO_FLUSH)
            conn.execute(
                "INSERT INTO usage_days (workspace_id, day, pulled) VALUES (%s, %s, %s) "
                "ON CONFLICT (workspace_id, day) DO UPDATE SET "
                "pulled = usage_days.pulled + excluded.pulled",
                (workspace_id, day_of(now), pulled),
            )
            self._audit(conn, workspace_id, key_id, "pull", {"mutations": pulled}, now)

    # -- quotas, usage, audit -----------------------------------------------------------------

    def set_quota(self, workspace_id: str, quota: Quota) -> None:
        with self._tx(workspace_id) as conn:
            self._latest(conn, workspace_id)
            conn.execute(
                "UPDATE workspaces SET max_mutations = %s, max_bytes = %s WHERE id = %s",
                (quota.max_mutations, quota.max_bytes, workspace_id),
            )

    def usage(self, workspace_id: str, days: int, now: int) -> Usage:
        with self._tx(workspace_id, snapshot=True) as conn:
            latest = self._latest(conn, workspace_id)
            row = conn.execute(
                "SELECT COUNT(DISTINCT entity_id), COUNT(DISTINCT entity_id) FILTER "
                f"(WHERE entity_id NOT LIKE '{RELATION_PREFIX}%%') FROM mutations "
                "WHERE workspace_id = %s",
                (workspace_id,),
            ).fetchone()
            rows = conn.execute(
                "SELECT day, pushes, mutations, bytes, pulled, recalls FROM usage_days "
                "WHERE workspace_id = %s AND day >= %s ORDER BY day DESC",
                (workspace_id, day_of(now - (days - 1) * DAY_MS)),
            ).fetchall()
            return Usage(
                latest,
                self._bytes(conn, workspace_id),
                int(row[0]) if row else 0,
                int(row[1]) if row else 0,
                self._quota(conn, workspace_id),
                [UsageDay(*r) for r in rows],
            )

    def audit(
        self, workspace_id: str, key_id: str | None, action: str, detail: dict[str, Any], now: int
    ) -> None:
        with self._tx(workspace_id) as conn:
            self._latest(conn, workspace_id)
            self._audit(conn, workspace_id, key_id, action, detail, now)

    def audit_log(self, workspace_id: str, limit: int, before: int | None) -> list[AuditEntry]:
        rows = self._all(
            workspace_id,
            "SELECT at, key_id, action, detail FROM audit WHERE workspace_id = %s AND at < %s "
            "ORDER BY at DESC, id DESC LIMIT %s",
            workspace_id,
            before if before is not None else 2**62,
            limit,
        )
        return [AuditEntry(at, key, action, dict(detail)) for at, key, action, detail in rows]

    def stats(self, workspace_id: str) -> WorkspaceStats:
        with self._tx(workspace_id, snapshot=True) as conn:
            latest = self._latest(conn, workspace_id)
            row = conn.execute(
                "SELECT (SELECT COUNT(*) FROM mutations WHERE workspace_id = %s), "
                "(SELECT COUNT(*) FROM devices WHERE workspace_id = %s)",
                (workspace_id, workspace_id),
            ).fetchone()
        assert row is not None  # a SELECT of two aggregates returns one row
        return WorkspaceStats(latest, row[0], row[1])

    def totals(self) -> Totals:
        row = self._one(
            ALL,
            "SELECT COUNT(*), COALESCE(SUM(latest_seq), 0), COALESCE(MAX(latest_seq), 0) "
            "FROM workspaces",
        )
        assert row is not None  # an aggregate always returns one row
        return Totals(int(row[0]), int(row[1]), int(row[2]))

    # -- keyring and devices ------------------------------------------------------------------

    def keyring(self, workspace_id: str) -> KeyringBlob | None:
        found = self.keyring_versions(workspace_id, 1)
        return found[0] if found else None

    def keyring_versions(self, workspace_id: str, limit: int) -> list[KeyringBlob]:
        rows = self._all(
            workspace_id,
            f"SELECT {_KEYRING_COLUMNS} FROM keyring_versions WHERE workspace_id = %s "
            "ORDER BY version DESC LIMIT %s",
            workspace_id,
            limit,
        )
        return [
            keyring_of(row, tuple(row[2]), _bytes_or_none(row[3]), _bytes_or_none(row[4]))
            for row in rows
        ]

    def put_keyring(
        self,
        workspace_id: str,
        blob: bytes,
        expected_version: int | None,
        revoked: Sequence[int] = (),
        proof: KeyringProof | None = None,
    ) -> int:
        with self._tx(workspace_id) as conn:
            self._latest(conn, workspace_id, lock=True)  # NotFound; one keyring writer at a time
            row = conn.execute(
                "SELECT MAX(version) FROM keyring_versions WHERE workspace_id = %s",
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
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    version,
                    blob,
                    sorted(set(revoked)),
                    *keyring_proof_values(proof),
                    workspace_id,
                ),
            )
        return version

    def register_device(self, workspace_id: str, device_id: str, name: str, now: int) -> None:
        with self._tx(workspace_id) as conn:
            self._latest(conn, workspace_id)
            conn.execute(
                "INSERT INTO devices (workspace_id, device_id, name, first_seen, last_seen) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (workspace_id, device_id) DO UPDATE "
                "SET name = excluded.name, last_seen = excluded.last_seen",
                (workspace_id, device_id, name, now, now),
            )

    def touch_device(self, workspace_id: str, device_id: str, now: int, pulled: bool) -> None:
        with self._tx(workspace_id) as conn:
            self._latest(conn, workspace_id)
            conn.execute(
                "INSERT INTO devices (workspace_id, device_id, name, first_seen, last_seen, "
                "last_pull_at) VALUES (%s, %s, '', %s, %s, %s) "
                "ON CONFLICT (workspace_id, device_id) DO UPDATE SET "
                "last_seen = excluded.last_seen, "
                "last_pull_at = COALESCE(excluded.last_pull_at, devices.last_pull_at)",
                (workspace_id, device_id, now, now, now if pulled else None),
            )

    def devices(self, workspace_id: str) -> list[Device]:
        rows = self._all(
            workspace_id,
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE workspace_id = %s "
            "ORDER BY first_seen, device_id",
            workspace_id,
        )
        return [Device(*row) for row in rows]

    # -- a hosted workspace's search index ----------------------------------------------------

    def index_position(self, workspace_id: str) -> int:
        with self._tx(workspace_id) as conn:
            return self._position(conn, workspace_id)

    def indexed_payloads(self, workspace_id: str, memory_ids: Sequence[str]) -> dict[str, bytes]:
        rows = self._all(
            workspace_id,
            "SELECT id, payload FROM hosted_memories WHERE workspace_id = %s AND id = ANY(%s)",
            workspace_id,
            list(memory_ids),
        )
        return {memory_id: bytes(payload) for memory_id, payload in rows}

    def indexed_relations(self, workspace_id: str, keys: Sequence[str]) -> dict[str, RelationState]:
        parts = [key.split("|", 2) for key in keys]  # from_id, type, to_id: the primary key
        rows = self._all(
            workspace_id,
            "SELECT from_id, to_id, type, created_at, deleted, hlc FROM hosted_relations "
            "WHERE workspace_id = %s AND (from_id, type, to_id) IN "
            "(SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]))",
            workspace_id,
            [p[0] for p in parts],
            [p[1] for p in parts],
            [p[2] for p in parts],
        )
        states = [RelationState(*row) for row in rows]
        return {state.key: state for state in states}

    def put_index(
        self,
        workspace_id: str,
        expected: int,
        position: int,
        memories: Sequence[IndexedMemory],
        relations: Sequence[RelationState],
    ) -> bool:
        with self._tx(workspace_id) as conn:
            # Moving the position first takes its row's lock: a second writer that read the
            # same position waits here, then sees it moved and writes nothing.
            moved = conn.execute(
                "INSERT INTO hosted_index (workspace_id, position) VALUES (%s, %s) "
                "ON CONFLICT (workspace_id) DO UPDATE SET position = excluded.position "
                "WHERE hosted_index.position = %s",
                (workspace_id, position, expected),
            ).rowcount
            if not moved:  # nothing written: the transaction commits nothing
                return False
            conn.cursor().executemany(
                f"INSERT INTO hosted_memories (workspace_id, {MEMORY_COLUMNS}, payload, "
                "embedding, position) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                "%s, %s, %s, %s::vector, %s) "
                "ON CONFLICT (workspace_id, id) DO UPDATE SET content = excluded.content, "
                "kind = excluded.kind, project = excluded.project, tags = excluded.tags, "
                "topic_key = excluded.topic_key, source = excluded.source, "
                "created_at = excluded.created_at, updated_at = excluded.updated_at, "
                "deleted = excluded.deleted, content_hash = excluded.content_hash, "
                "model_id = excluded.model_id, hlc = excluded.hlc, payload = excluded.payload, "
                "embedding = excluded.embedding, position = excluded.position",
                [
                    (
                        workspace_id,
                        *memory_values(m.memory, list(m.memory.tags)),
                        m.payload,
                        _vector(m.vector),
                        position,
                    )
                    for m in memories
                ],
            )
            conn.cursor().executemany(
                "INSERT INTO hosted_relations (workspace_id, from_id, to_id, type, created_at, "
                "deleted, hlc) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (workspace_id, from_id, type, to_id) DO UPDATE SET "
                "created_at = excluded.created_at, deleted = excluded.deleted, hlc = excluded.hlc",
                [
                    (workspace_id, r.from_id, r.to_id, r.type, r.created_at, r.deleted, r.hlc)
                    for r in relations
                ],
            )
        return True

    def nearest(self, workspace_id: str, vector: bytes, filters: Filters, depth: int) -> Ranked:
        where, params = _index_filter(filters)
        query = _vector(vector)
        with self._tx(workspace_id) as conn:
            # Iterative scans keep walking the HNSW graph until enough rows pass the filters
            # (this workspace's, the project's...), instead of filtering one fixed candidate set.
            conn.execute(
                "SELECT set_config('hnsw.ef_search', %s, true), "
                "set_config('hnsw.iterative_scan', 'relaxed_order', true)",
                (str(min(max(EF_SEARCH, depth), MAX_EF_SEARCH)),),
            )
            rows = conn.execute(
                "SELECT m.id, 1 - (m.embedding <=> %s::vector) AS cosine FROM hosted_memories m "
                f"WHERE m.workspace_id = %s AND m.embedding IS NOT NULL AND {where} "
                "ORDER BY m.embedding <=> %s::vector LIMIT %s",
                (query, workspace_id, *params, query, depth),
            ).fetchall()
        ranked = [(memory_id, float(cosine)) for memory_id, cosine in rows]
        ranked.sort(key=lambda r: -r[1])  # relaxed order: nearly sorted
        return ranked

    def keyword(
        self, workspace_id: str, terms: Sequence[Sequence[str]], filters: Filters, depth: int
    ) -> Ranked:
        # Each term a phrase of quoted tokens; the tokens are word characters only (no quotes).
        match = " | ".join(
            "(" + " <-> ".join(f"'{token}'" for token in tokens) + ")" for tokens in terms if tokens
        )
        if not match:
            return []
        where, params = _index_filter(filters)
        rows = self._all(
            workspace_id,
            "SELECT m.id, ts_rank_cd(m.words, q) AS rank "
            "FROM hosted_memories m, to_tsquery('english'::regconfig, %s) q "
            f"WHERE m.workspace_id = %s AND m.words @@ q AND {where} "
            "ORDER BY rank DESC, m.id LIMIT %s",
            match,
            workspace_id,
            *params,
            depth,
        )
        return [(memory_id, float(rank)) for memory_id, rank in rows]

    def indexed_memories(self, workspace_id: str, memory_ids: Sequence[str]) -> dict[str, Memory]:
        rows = self._all(
            workspace_id,
            f"SELECT {MEMORY_COLUMNS} FROM hosted_memories WHERE workspace_id = %s "
            "AND id = ANY(%s)",
            workspace_id,
            list(memory_ids),
        )
        return {row[0]: memory_of(row, row[4]) for row in rows}

    def successors(self, workspace_id: str, memory_ids: Sequence[str]) -> dict[str, str]:
        rows = self._all(
            workspace_id,
            "SELECT r.to_id, r.from_id FROM hosted_relations r JOIN hosted_memories m "
            "ON m.workspace_id = r.workspace_id AND m.id = r.from_id "
            "WHERE r.workspace_id = %s AND r.type = 'supersedes' AND NOT r.deleted "
            "AND NOT m.deleted AND r.to_id = ANY(%s) ORDER BY r.created_at",
            workspace_id,
            list(memory_ids),
        )
        return {to_id: from_id for to_id, from_id in rows}

    def list_indexed(
        self, workspace_id: str, filters: Filters, limit: int, offset: int
    ) -> tuple[list[Memory], int]:
        where, params = _index_filter(filters)
        sql = f"FROM hosted_memories m WHERE m.workspace_id = %s AND {where}"
        with self._tx(workspace_id, snapshot=True) as conn:
            row = conn.execute(f"SELECT COUNT(*) {sql}", (workspace_id, *params)).fetchone()
            rows = conn.execute(
                f"SELECT {MEMORY_COLUMNS} {sql} ORDER BY m.created_at DESC, m.id DESC "
                "LIMIT %s OFFSET %s",
                (workspace_id, *params, limit, offset),
            ).fetchall()
        return [memory_of(r, r[4]) for r in rows], int(row[0]) if row else 0

    def live_by_hash(self, workspace_id: str, project: str, content_hash: str) -> Memory | None:
        row = self._one(
            workspace_id,
            f"SELECT {MEMORY_COLUMNS} FROM hosted_memories WHERE workspace_id = %s "
            "AND project = %s AND content_hash = %s AND NOT deleted ORDER BY id LIMIT 1",
            workspace_id,
            project,
            content_hash,
        )
        return memory_of(row, row[4]) if row else None

    def topic_head(self, workspace_id: str, project: str, topic_key: str) -> Memory | None:
        row = self._one(
            workspace_id,
            f"SELECT {MEMORY_COLUMNS} FROM hosted_memories WHERE workspace_id = %s "
            "AND project = %s AND topic_key = %s ORDER BY created_at DESC, id DESC LIMIT 1",
            workspace_id,
            project,
            topic_key,
        )
        return memory_of(row, row[4]) if row else None

    def record_recall(
        self, workspace_id: str, key_id: str, detail: dict[str, Any], now: int
    ) -> None:
        with self._tx(workspace_id) as conn:
            conn.execute(_NO_FLUSH)
            self._latest(conn, workspace_id)
            conn.execute(
                "INSERT INTO usage_days (workspace_id, day, recalls) VALUES (%s, %s, 1) "
                "ON CONFLICT (workspace_id, day) DO UPDATE SET recalls = usage_days.recalls + 1",
                (workspace_id, day_of(now)),
            )
            self._audit(conn, workspace_id, key_id, "recall", detail, now)

    def close(self) -> None:
        self._pool.close()

    # -- plumbing -----------------------------------------------------------------------------

    @contextmanager
    def _tx(self, workspace_id: str, snapshot: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """One transaction that sees only ``workspace_id``'s rows (``ALL``: every workspace);
        ``snapshot``: every statement in it reads the same snapshot."""
        try:
            with self._pool.connection() as conn, conn.transaction():
                if snapshot:
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                conn.execute("SELECT set_config('cairn.workspace_id', %s, true)", (workspace_id,))
                yield conn
        except PoolTimeout as exc:
            raise StoreError(
                f"no connection to PostgreSQL at {self.path} became free within 30 s"
            ) from exc
        except psycopg.OperationalError as exc:
            raise StoreError(f"PostgreSQL at {self.path}: {exc}") from exc

    def _one(self, workspace_id: str, sql: str, *args: Any) -> Any:
        with self._tx(workspace_id) as conn:
            return conn.execute(sql, args).fetchone()

    def _all(self, workspace_id: str, sql: str, *args: Any) -> list[Any]:
        with self._tx(workspace_id) as conn:
            return conn.execute(sql, args).fetchall()

    @staticmethod
    def _audit(
        conn: psycopg.Connection[Any],
        workspace_id: str,
        key_id: str | None,
        action: str,
        detail: dict[str, Any],
        now: int,
    ) -> None:
        conn.execute(
            "INSERT INTO audit (workspace_id, at, key_id, action, detail) "
            "VALUES (%s, %s, %s, %s, %s)",
            (workspace_id, now, key_id, action, Jsonb(detail)),
        )

    @staticmethod
    def _quota(conn: psycopg.Connection[Any], workspace_id: str) -> Quota:
        row = conn.execute(
            "SELECT max_mutations, max_bytes FROM workspaces WHERE id = %s", (workspace_id,)
        ).fetchone()
        return Quota(*row) if row else Quota()

    @staticmethod
    def _bytes(conn: psycopg.Connection[Any], workspace_id: str) -> int:
        row = conn.execute(
            "SELECT stored_bytes FROM workspaces WHERE id = %s", (workspace_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _position(conn: psycopg.Connection[Any], workspace_id: str) -> int:
        row = conn.execute(
            "SELECT position FROM hosted_index WHERE workspace_id = %s", (workspace_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _latest(conn: psycopg.Connection[Any], workspace_id: str, lock: bool = False) -> int:
        row = conn.execute(
            # FOR NO KEY UPDATE: serialises pushes, yet lets the foreign-key checks of rows that
            # reference the workspace (usage, audit: FOR KEY SHARE) through, so a pull's
            # metering never waits on a push that waits on it.
            "SELECT latest_seq FROM workspaces WHERE id = %s"
            + (" FOR NO KEY UPDATE" if lock else ""),
            (workspace_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no workspace with id {workspace_id!r}")
        return int(row[0])

    def _migrate(self) -> None:
        with self._tx(ALL) as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS cairn_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM cairn_schema").fetchone()
            if row is None:
                conn.execute("INSERT INTO cairn_schema (version) VALUES (0)")
            version = row[0] if row else 0
            if version > len(MIGRATIONS):
                raise SchemaTooNew(
                    f"the database at {self.path} was written by a newer Cairn server (schema "
                    f"{version}, this one knows {len(MIGRATIONS)}); upgrade cairn"
                )
            for number in range(version, len(MIGRATIONS)):
                try:
                    conn.execute(MIGRATIONS[number].encode())
                except (pg_errors.InsufficientPrivilege, pg_errors.FeatureNotSupported) as exc:
                    if '"vector"' not in str(exc):
                        raise
                    raise StoreError(
                        f"the database at {self.path} needs the pgvector extension, and this "
                        f"role cannot create it ({str(exc).strip()}); as a superuser, run "
                        "`CREATE EXTENSION vector;` in this database (pgvector is installed "
                        "with PostgreSQL on most hosts, and on Supabase, Neon and RDS)"
                    ) from exc
                conn.execute("UPDATE cairn_schema SET version = %s", (number + 1,))


def _index_filter(filters: Filters) -> tuple[str, list[Any]]:
    """The SQL (over ``hosted_memories m``) of live memories passing ``filters``."""
    clauses = ["NOT m.deleted"]
    params: list[Any] = []
    if filters.project is not None:
        clauses.append("m.project = %s")
        params.append(filters.project)
    if filters.kinds:
        clauses.append("m.kind = ANY(%s)")
        params.append(list(filters.kinds))
    if filters.since_ms is not None:
        clauses.append("m.created_at >= %s")
        params.append(filters.since_ms)
    if filters.until_ms is not None:
        clauses.append("m.created_at < %s")
        params.append(filters.until_ms)
    if filters.tags:
        clauses.append("m.tags @> %s")
        params.append(list(filters.tags))
    return " AND ".join(clauses), params


def _vector(vector: bytes | None) -> str | None:
    """A float32 vector in pgvector's text form (None stays NULL)."""
    if vector is None:
        return None
    values = np.frombuffer(vector, dtype="<f4")
    if values.shape != (INDEX_DIM,):
        return None
    return "[" + ",".join(map(repr, values.tolist())) + "]"


def _redacted(url: str) -> str:
    """The URL without its password."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        reason = str(exc).strip()
        raise InvalidInput(
            f"--db: {reason}; give postgresql://user:password@host:5432/database"
        ) from exc
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo("", **info)


def _bytes_or_none(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def _key(row: Sequence[Any]) -> ApiKey:
    key_id, workspace_id, name, scopes, created, used, revoked, secret_hash = row
    return ApiKey(
        key_id, workspace_id, name, tuple(scopes.split(",")), created, used, revoked, secret_hash
    )
