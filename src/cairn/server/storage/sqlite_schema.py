"""The embedded SQLite server database's schema: numbered migrations, never edited."""

from __future__ import annotations

from cairn.server.storage import tables
from cairn.store.migrations import keyword_index

TYPES = tables.Types("INTEGER", "BLOB", "INTEGER", "TEXT", "TEXT NOT NULL DEFAULT '[]'", "")

_FTS = keyword_index("hosted_memories", "hosted_fts") + ";"

# Numbered migrations: PRAGMA user_version is how many ran. Never edit one; add the next.
MIGRATIONS: tuple[str, ...] = (
    # 1: workspaces (with the last seq handed out), keys, the mutation log, devices, keyrings.
    tables.core(TYPES) + "\n    );\n    ",
    # 2: the key ids a keyring revoked (a JSON list), so pushes sealed under them are refused.
    """
    ALTER TABLE keyrings ADD COLUMN revoked TEXT NOT NULL DEFAULT '[]';
    """,
    # 3: metering (bytes stored, usage per day), quotas, and the audit log.
    tables.metering(TYPES, audit_id="", detail="TEXT"),
    # 4: hosted workspaces' search index, a projection of their log (cairn.server.hosted):
    # how far it has read, each memory's merged state with the fields searched, keyword search
    # (FTS5) and the relations.
    tables.hosted_memories(
        TYPES,
        search_columns="        vector BLOB,",
        search_indexes="    CREATE INDEX hosted_memories_position ON hosted_memories "
        "(workspace_id, position);",
    )
    + _FTS
    + tables.hosted_relations(TYPES),
    # 5: every keyring version is kept, with its proof (cairn.keyring_rules).
    tables.keyring_versions(TYPES) + tables.KEYRINGS_MOVED,
    # 6: the server's own audit log, which outlives a deleted workspace; and the keyword index
    # forgets a hosted memory whose row is deleted (a workspace's deletion).
    tables.server_audit(TYPES, audit_id="", detail="TEXT")
    + """CREATE TRIGGER hosted_fts_delete AFTER DELETE ON hosted_memories WHEN old.deleted = 0
    BEGIN
        INSERT INTO hosted_fts(hosted_fts, rowid, content)
            VALUES ('delete', old.rowid, old.content);
    END;
    """,
    # 7: how far each device had pulled (the admin console shows how far behind it is).
    tables.device_cursor(TYPES),
)
