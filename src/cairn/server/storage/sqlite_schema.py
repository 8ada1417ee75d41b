"""The embedded SQLite server database's schema: numbered migrations, never edited."""

from __future__ import annotations

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
