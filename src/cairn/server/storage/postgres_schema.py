"""The PostgreSQL server database's schema: numbered migrations (never edited) and tenancy."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import errors as pg_errors

from cairn.errors import SchemaTooNew, StoreError
from cairn.server.storage.records import INDEX_DIM
from cairn.server.storage.sql import ALL

_TENANT = "current_setting('cairn.workspace_id', true)"
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


def migrate(conn: psycopg.Connection[Any], where: object) -> None:
    """Bring the database ``conn`` is in (at ``where``, for messages) up to the last migration,
    one process at a time; SchemaTooNew when a newer Cairn wrote it."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
    conn.execute("CREATE TABLE IF NOT EXISTS cairn_schema (version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM cairn_schema").fetchone()
    if row is None:
        conn.execute("INSERT INTO cairn_schema (version) VALUES (0)")
    version = row[0] if row else 0
    if version > len(MIGRATIONS):
        raise SchemaTooNew(
            f"the database at {where} was written by a newer Cairn server (schema "
            f"{version}, this one knows {len(MIGRATIONS)}); upgrade cairn"
        )
    for number in range(version, len(MIGRATIONS)):
        try:
            conn.execute(MIGRATIONS[number].encode())
        except (pg_errors.InsufficientPrivilege, pg_errors.FeatureNotSupported) as exc:
            if '"vector"' not in str(exc):
                raise
            raise StoreError(
                f"the database at {where} needs the pgvector extension, and this "
                f"role cannot create it ({str(exc).strip()}); as a superuser, run "
                "`CREATE EXTENSION vector;` in this database (pgvector is installed "
                "with PostgreSQL on most hosts, and on Supabase, Neon and RDS)"
            ) from exc
        conn.execute("UPDATE cairn_schema SET version = %s", (number + 1,))
