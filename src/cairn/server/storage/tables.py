"""The server's tables, written once for both databases; each schema fills in its own types.

The migrations built from these (``sqlite_schema``, ``postgres_schema``) are the exact text
each database has always run: never edit a piece a past migration uses, add the next.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Types:
    """How one database spells the columns that differ."""

    time: str
    """Milliseconds and counters (INTEGER; BIGINT)."""
    blob: str
    """Bytes (BLOB; BYTEA)."""
    flag: str
    """A yes or no (INTEGER; BOOLEAN)."""
    tags: str
    """A list of strings (TEXT holding JSON; TEXT[])."""
    ints: str
    """A set of ints, its type and default (TEXT holding JSON; INTEGER[])."""
    key_index: str
    """What stands between ``api_keys`` and its columns in the index (as first written)."""


def core(t: Types) -> str:
    """Migration 1's workspaces, API keys, mutation log and devices."""
    return f"""
    CREATE TABLE workspaces (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        mode TEXT NOT NULL,
        created_at {t.time} NOT NULL,
        latest_seq {t.time} NOT NULL DEFAULT 0
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        name TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        scopes TEXT NOT NULL,
        created_at {t.time} NOT NULL,
        last_used_at {t.time},
        revoked_at {t.time}
    );
    CREATE INDEX api_keys_workspace ON api_keys{t.key_index}(workspace_id, created_at);
    CREATE TABLE mutations (
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        seq {t.time} NOT NULL,
        mutation_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        device_id TEXT NOT NULL,
        hlc TEXT NOT NULL,
        entity_id TEXT NOT NULL,
        scope TEXT,
        payload {t.blob} NOT NULL,
        received_at {t.time} NOT NULL,
        PRIMARY KEY (workspace_id, seq),
        UNIQUE (workspace_id, mutation_id)
    );
    CREATE TABLE devices (
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        device_id TEXT NOT NULL,
        name TEXT NOT NULL,
        first_seen {t.time} NOT NULL,
        last_seen {t.time} NOT NULL,
        pushed {t.time} NOT NULL DEFAULT 0,
        last_push_at {t.time},
        last_pull_at {t.time},
        PRIMARY KEY (workspace_id, device_id)
    );
    CREATE TABLE keyrings (
        workspace_id TEXT PRIMARY KEY REFERENCES workspaces(id),
        version INTEGER NOT NULL,
        blob {t.blob} NOT NULL"""


def metering(t: Types, audit_id: str, detail: str) -> str:
    """Bytes stored, quotas, usage per day and the audit log (``audit_id``: the audit table's
    own key column, if it has one; ``detail``: the JSON column's type)."""
    return f"""
    ALTER TABLE workspaces ADD COLUMN stored_bytes {t.time} NOT NULL DEFAULT 0;
    ALTER TABLE workspaces ADD COLUMN max_mutations {t.time};
    ALTER TABLE workspaces ADD COLUMN max_bytes {t.time};
    UPDATE workspaces SET stored_bytes = (
        SELECT COALESCE(SUM(length(payload)), 0) FROM mutations m
        WHERE m.workspace_id = workspaces.id
    );
    CREATE TABLE usage_days (
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        day TEXT NOT NULL,
        pushes {t.time} NOT NULL DEFAULT 0,
        mutations {t.time} NOT NULL DEFAULT 0,
        bytes {t.time} NOT NULL DEFAULT 0,
        pulled {t.time} NOT NULL DEFAULT 0,
        recalls {t.time} NOT NULL DEFAULT 0,
        PRIMARY KEY (workspace_id, day)
    );
    CREATE TABLE audit ({audit_id}
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        at {t.time} NOT NULL,
        key_id TEXT,
        action TEXT NOT NULL,
        detail {detail} NOT NULL
    );
    CREATE INDEX audit_at ON audit (workspace_id, at);
    """


def hosted_memories(t: Types, search_columns: str, search_indexes: str) -> str:
    """A hosted workspace's index position and memories, with the columns and indexes each
    database searches by."""
    return f"""
    CREATE TABLE hosted_index (
        workspace_id TEXT PRIMARY KEY REFERENCES workspaces(id),
        position {t.time} NOT NULL
    );
    CREATE TABLE hosted_memories (
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        id TEXT NOT NULL,
        content TEXT NOT NULL,
        kind TEXT NOT NULL,
        project TEXT NOT NULL,
        tags {t.tags} NOT NULL,
        topic_key TEXT,
        source TEXT NOT NULL,
        created_at {t.time} NOT NULL,
        updated_at {t.time} NOT NULL,
        deleted {t.flag} NOT NULL,
        content_hash TEXT NOT NULL,
        model_id TEXT,
        hlc TEXT NOT NULL,
        payload {t.blob} NOT NULL,
{search_columns}
        position {t.time} NOT NULL,
        PRIMARY KEY (workspace_id, id)
    );
{search_indexes}
    CREATE INDEX hosted_memories_hash ON hosted_memories (workspace_id, project, content_hash);
    CREATE INDEX hosted_memories_topic ON hosted_memories
        (workspace_id, project, topic_key, created_at);
    CREATE INDEX hosted_memories_created ON hosted_memories (workspace_id, created_at);"""


def hosted_relations(t: Types) -> str:
    """A hosted workspace's relations, as folded from its log."""
    return f"""
    CREATE TABLE hosted_relations (
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        from_id TEXT NOT NULL,
        to_id TEXT NOT NULL,
        type TEXT NOT NULL,
        created_at {t.time} NOT NULL,
        deleted {t.flag} NOT NULL,
        hlc TEXT NOT NULL,
        PRIMARY KEY (workspace_id, from_id, type, to_id)
    );
    CREATE INDEX hosted_relations_to ON hosted_relations (workspace_id, to_id, type);
    """


def keyring_versions(t: Types) -> str:
    """Every keyring version, with its proof (``cairn.keyring_rules``)."""
    return f"""
    CREATE TABLE keyring_versions (
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        version INTEGER NOT NULL,
        blob {t.blob} NOT NULL,
        revoked {t.ints},
        signature {t.blob},
        verify_key {t.blob},
        signed_version INTEGER,
        PRIMARY KEY (workspace_id, version)
    );"""


KEYRINGS_MOVED = """
    INSERT INTO keyring_versions (workspace_id, version, blob, revoked)
        SELECT workspace_id, version, blob, revoked FROM keyrings;
    DROP TABLE keyrings;
    """
"""The single keyring each workspace had becomes its version of that number, without a proof."""


def server_audit(t: Types, audit_id: str, detail: str) -> str:
    """The server's own audit log: what an operator did to whole workspaces (a deletion, an
    import), kept when the workspace is gone, so it names the workspace without a foreign key."""
    return f"""
    CREATE TABLE server_audit ({audit_id}
        at {t.time} NOT NULL,
        action TEXT NOT NULL,
        workspace_id TEXT NOT NULL,
        workspace_name TEXT NOT NULL,
        detail {detail} NOT NULL
    );
    CREATE INDEX server_audit_at ON server_audit (at);
    """


def device_cursor(t: Types) -> str:
    """The log seq up to which each device had pulled when it last pulled (how far behind)."""
    return f"""
    ALTER TABLE devices ADD COLUMN pulled_seq {t.time};
    """
