"""Numbered schema migrations, applied in order on open (``PRAGMA user_version`` is the number).

Never edit a released migration; add a new one.
"""

from __future__ import annotations


def keyword_index(table: str, fts: str) -> str:
    """The keyword (FTS5 BM25) index over ``table``'s live content, kept in step by triggers
    (tombstones are not indexed): one tokenizer for the device and for hosted workspaces."""
    return f"""
    CREATE VIRTUAL TABLE {fts} USING fts5(
        content, content='{table}', content_rowid='rowid',
        tokenize="porter unicode61 remove_diacritics 2 tokenchars '_'"
    );
    CREATE TRIGGER {fts}_insert AFTER INSERT ON {table} WHEN new.deleted = 0 BEGIN
        INSERT INTO {fts}(rowid, content) VALUES (new.rowid, new.content);
    END;
    CREATE TRIGGER {fts}_update AFTER UPDATE OF content, deleted ON {table} BEGIN
        INSERT INTO {fts}({fts}, rowid, content)
            SELECT 'delete', old.rowid, old.content WHERE old.deleted = 0;
        INSERT INTO {fts}(rowid, content)
            SELECT new.rowid, new.content WHERE new.deleted = 0;
    END"""


MIGRATIONS: tuple[str, ...] = (
    # 1: memories, tags, vectors, device metadata and the sync outbox.
    # Clocks: a field's HLC is field_hlc[field] if present, else created_hlc (kept compact).
    # The outbox stores no vector: pending() attaches the memory's vector while its content is
    # the one the mutation carries, so each vector is stored once.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE memories (
        rowid INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        content TEXT NOT NULL,
        kind TEXT NOT NULL,
        project TEXT NOT NULL,
        topic_key TEXT,
        source TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0,
        content_hash TEXT NOT NULL,
        model_id TEXT,
        created_hlc TEXT NOT NULL,
        hlc TEXT NOT NULL,
        field_hlc TEXT NOT NULL DEFAULT '{}',
        seq INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX memories_seq ON memories(seq);
    CREATE INDEX memories_project ON memories(project, deleted);
    CREATE INDEX memories_hash ON memories(content_hash, project) WHERE deleted = 0;
    CREATE INDEX memories_topic ON memories(project, topic_key) WHERE topic_key IS NOT NULL;
    CREATE INDEX memories_created ON memories(created_at);
    CREATE TABLE memory_tags (
        memory_rowid INTEGER NOT NULL REFERENCES memories(rowid),
        tag TEXT NOT NULL,
        PRIMARY KEY (memory_rowid, tag)
    ) WITHOUT ROWID;
    CREATE INDEX memory_tags_tag ON memory_tags(tag, memory_rowid);
    CREATE TABLE memory_vectors (
        memory_rowid INTEGER PRIMARY KEY REFERENCES memories(rowid),
        model_id TEXT NOT NULL,
        vector BLOB NOT NULL
    );
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        mutation_id TEXT NOT NULL UNIQUE,
        device_id TEXT NOT NULL,
        hlc TEXT NOT NULL,
        entity TEXT NOT NULL,
        entity_id TEXT NOT NULL,
        op TEXT NOT NULL,
        fields TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    """,
    # 2: keyword search. External-content FTS5 kept in step by triggers, so it commits in the
    # same transaction as the row; tombstones are not indexed. Rebuild indexes existing rows.
    keyword_index("memories", "memories_fts")
    + """;
    INSERT INTO memories_fts(memories_fts) VALUES ('rebuild');
    INSERT INTO memories_fts(memories_fts, rowid, content)
        SELECT 'delete', rowid, content FROM memories WHERE deleted = 1;
    """,
    # 3: relations between memories (supersedes, relates_to, contradicts, duplicate_of).
    """
    CREATE TABLE relations (
        from_id TEXT NOT NULL,
        to_id TEXT NOT NULL,
        type TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        hlc TEXT NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (from_id, to_id, type)
    ) WITHOUT ROWID;
    CREATE INDEX relations_to ON relations(to_id, type);
    """,
    # 4: sync. The outbox names changed entities only: a push sends each entity's whole current
    # state (a state-based merge), so several local changes to one memory travel once.
    # Content versions: `ancestors` lists the clocks a memory's content was written over;
    # `conflicts` keeps losing concurrent versions; `dead_letters` what a remote refused.
    """
    ALTER TABLE outbox DROP COLUMN fields;
    ALTER TABLE outbox DROP COLUMN op;
    CREATE INDEX outbox_entity ON outbox(entity_id, seq);
    ALTER TABLE memories ADD COLUMN ancestors TEXT NOT NULL DEFAULT '[]';
    CREATE TABLE conflicts (
        memory_id TEXT NOT NULL,
        hlc TEXT NOT NULL,
        content TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        PRIMARY KEY (memory_id, hlc)
    ) WITHOUT ROWID;
    CREATE TABLE dead_letters (
        mutation_id TEXT PRIMARY KEY,
        direction TEXT NOT NULL,
        entity TEXT NOT NULL,
        entity_id TEXT NOT NULL,
        code TEXT NOT NULL,
        message TEXT NOT NULL,
        failed_at INTEGER NOT NULL
    );
    """,
    # 5: new rows enter the keyword index by an explicit statement, not a per-row trigger: a
    # pulled page is indexed by one INSERT ... SELECT, twice as fast (bench/bench_sync.py).
    # Updates and deletes keep their trigger.
    """
    DROP TRIGGER memories_fts_insert;
    """,
)
