"""The PostgreSQL server database's schema: numbered migrations (never edited) and tenancy."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import errors as pg_errors

from cairn.errors import SchemaTooNew, StoreError
from cairn.server.storage import postgres_bm25 as bm25
from cairn.server.storage import tables
from cairn.server.storage.records import INDEX_DIM
from cairn.server.storage.sql import ALL

_TENANT = "current_setting('cairn.workspace_id', true)"
_MIGRATE_LOCK = 7_351_100  # pg_advisory_xact_lock key: one migrator at a time

TYPES = tables.Types("BIGINT", "BYTEA", "BOOLEAN", "TEXT[]", "INTEGER[] NOT NULL DEFAULT '{}'", " ")


def _tenancy(*names: str) -> str:
    """Row-level security on these tables: a transaction sees only the rows of the workspace
    it declared, or every workspace's when it declared ``ALL``."""
    return "".join(
        f"""
    ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
    ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
    CREATE POLICY tenant ON {table}
        USING (workspace_id = {_TENANT} OR {_TENANT} = '{ALL}');
    """
        for table in names
    )


# Numbered migrations: cairn_schema.version is how many ran. Never edit one; add the next.
MIGRATIONS: tuple[str, ...] = (
    # 1: the same tables as the embedded store, and row-level security on every one of them.
    tables.core(TYPES)
    + f""",
        revoked INTEGER[] NOT NULL DEFAULT '{{}}'
    );
    ALTER TABLE workspaces ENABLE ROW LEVEL SECURITY;
    ALTER TABLE workspaces FORCE ROW LEVEL SECURITY;
    CREATE POLICY tenant ON workspaces USING (id = {_TENANT} OR {_TENANT} = '{ALL}');
    """
    + _tenancy("api_keys", "mutations", "devices", "keyrings"),
    # 2: metering (bytes stored, usage per day), quotas, and the audit log.
    tables.metering(TYPES, audit_id="\n        id BIGSERIAL PRIMARY KEY,", detail="JSONB")
    + _tenancy("usage_days", "audit"),
    # 3: hosted workspaces' search index, a projection of their log (cairn.server.hosted): how
    # far it has read, each memory's merged state with the fields searched, a pgvector HNSW
    # index (cosine) and a full-text index, and the relations.
    "\n    CREATE EXTENSION IF NOT EXISTS vector;"
    + tables.hosted_memories(
        TYPES,
        search_columns=f"""        embedding vector({INDEX_DIM}),
        words tsvector GENERATED ALWAYS AS
            (to_tsvector('english'::regconfig, CASE WHEN deleted THEN '' ELSE content END))
            STORED,""",
        search_indexes="""    CREATE INDEX hosted_memories_embedding ON hosted_memories
        USING hnsw (embedding vector_cosine_ops);
    CREATE INDEX hosted_memories_words ON hosted_memories USING gin (words);""",
    )
    + tables.hosted_relations(TYPES)
    + _tenancy("hosted_index", "hosted_memories", "hosted_relations"),
    # 4: every keyring version is kept, with its proof (cairn.keyring_rules).
    tables.keyring_versions(TYPES) + _tenancy("keyring_versions") + tables.KEYRINGS_MOVED.lstrip(),
    # 5: vectors searched exactly in the app's memory (cairn.server.storage.hosted_vectors),
    # followed by position, instead of HNSW (whose inserts held folds to ~400 memories/s); BM25
    # keyword ranking (cairn.server.storage.postgres_bm25): memories' terms split as FTS5
    # splits them, each memory's token count, postings and each workspace's term statistics,
    # counted from the rows already folded. The GIN index goes: under row-level security `@@`
    # (not leakproof) cannot use it. Postings carry no foreign key: a check per posting would
    # double a fold's cost, and they are written only from hosted_memories' rows.
    f"""
    DROP INDEX hosted_memories_embedding;
    CREATE INDEX hosted_memories_position ON hosted_memories (workspace_id, position);
    DROP INDEX hosted_memories_words;
    ALTER TABLE hosted_memories DROP COLUMN words;
    ALTER TABLE hosted_memories
        ADD COLUMN words tsvector GENERATED ALWAYS AS
            (CASE WHEN deleted THEN ''::tsvector ELSE {bm25.WORDS} END) STORED,
        ADD COLUMN length INTEGER GENERATED ALWAYS AS
            (CASE WHEN deleted THEN 0 ELSE regexp_count(content, '\\w+') END) STORED;
    ALTER TABLE hosted_index
        ADD COLUMN docs BIGINT NOT NULL DEFAULT 0,
        ADD COLUMN tokens BIGINT NOT NULL DEFAULT 0;
    CREATE TABLE hosted_terms (
        workspace_id TEXT NOT NULL REFERENCES workspaces(id),
        term TEXT NOT NULL,
        docs BIGINT NOT NULL,
        PRIMARY KEY (workspace_id, term)
    );
    CREATE TABLE hosted_postings (
        workspace_id TEXT NOT NULL,
        term TEXT NOT NULL,
        id TEXT NOT NULL,
        tf INTEGER NOT NULL,
        length INTEGER NOT NULL,
        PRIMARY KEY (workspace_id, term, id)
    );
    INSERT INTO hosted_postings (workspace_id, term, id, tf, length)
        SELECT m.workspace_id, u.lexeme, m.id, cardinality(u.positions), m.length
        FROM hosted_memories m CROSS JOIN LATERAL unnest(m.words) u;
    INSERT INTO hosted_terms (workspace_id, term, docs)
        SELECT m.workspace_id, u.lexeme, count(*)
        FROM hosted_memories m CROSS JOIN LATERAL unnest(m.words) u
        GROUP BY m.workspace_id, u.lexeme;
    UPDATE hosted_index i SET docs = t.docs, tokens = t.tokens FROM
        (SELECT workspace_id, count(*) FILTER (WHERE NOT deleted) AS docs,
                coalesce(sum(length), 0) AS tokens
         FROM hosted_memories GROUP BY workspace_id) t
        WHERE t.workspace_id = i.workspace_id;"""
    + _tenancy("hosted_terms", "hosted_postings"),
    # 6: the server's own audit log, which outlives a deleted workspace; only a transaction
    # over every workspace (the operator's) sees it.
    tables.server_audit(TYPES, audit_id="\n        id BIGSERIAL PRIMARY KEY,", detail="JSONB")
    + f"""ALTER TABLE server_audit ENABLE ROW LEVEL SECURITY;
    ALTER TABLE server_audit FORCE ROW LEVEL SECURITY;
    CREATE POLICY operator ON server_audit USING ({_TENANT} = '{ALL}');
    """,
    # 7: how far each device had pulled (the admin console shows how far behind it is).
    tables.device_cursor(TYPES),
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
