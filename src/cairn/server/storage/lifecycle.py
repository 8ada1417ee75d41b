"""The core's workspace lifecycle: a workspace deleted whole, and the server's own audit log."""

from __future__ import annotations

from typing import Any

from cairn.server.storage.dialect import Conn
from cairn.server.storage.records import ServerEvent
from cairn.server.storage.sql import ALL, SqlBase

WORKSPACE_TABLES = (
    "hosted_relations",
    "hosted_memories",
    "hosted_index",
    "keyring_versions",
    "audit",
    "usage_days",
    "devices",
    "mutations",
    "api_keys",
)
"""Every table holding a workspace's rows (besides ``workspaces``), in an order that deletes
rows before the ones they refer to; a backend's own index tables (``Dialect.index_tables``) go
first. ``tests/server/test_lifecycle.py`` checks every table of the schema against it."""


class Lifecycle(SqlBase):
    """Deleting a workspace with every row it owns, and the server-level audit of it."""

    def delete_workspace(self, workspace_id: str, now: int, by: str) -> dict[str, int]:
        # One transaction over every workspace's rows: the deletion and its audit entry commit
        # together, and a push holding the workspace's row finishes first (then finds none).
        with self._write(ALL) as conn:
            self._latest(conn, workspace_id, lock=True)  # NotFound: nothing changes
            name = conn.execute(
                "SELECT name FROM workspaces WHERE id = ?", (workspace_id,)
            ).fetchone()[0]
            deleted: dict[str, int] = {}
            for table in (*self.dialect.index_tables, *WORKSPACE_TABLES):
                cursor = conn.execute(
                    f"DELETE FROM {table} WHERE workspace_id = ?", (workspace_id,)
                )
                deleted[table] = max(cursor.rowcount, 0)
            conn.execute("DELETE FROM workspaces WHERE id = ?", (workspace_id,))
            self._server_audit(
                conn, "workspace_deleted", workspace_id, name, {"by": by, "rows": deleted}, now
            )
        return deleted

    def server_events(self, limit: int) -> list[ServerEvent]:
        rows = self._all(
            ALL,
            "SELECT at, action, workspace_id, workspace_name, detail FROM server_audit "
            f"ORDER BY at DESC, {self.dialect.audit_order} DESC LIMIT ?",
            limit,
        )
        decode = self.dialect.decode_json
        return [ServerEvent(at, action, wid, name, decode(d)) for at, action, wid, name, d in rows]

    def _server_audit(
        self,
        conn: Conn,
        action: str,
        workspace_id: str,
        name: str,
        detail: dict[str, Any],
        now: int,
    ) -> None:
        conn.execute(
            "INSERT INTO server_audit (at, action, workspace_id, workspace_name, detail) "
            f"VALUES (?, ?, ?, ?, {self.dialect.json_marker})",
            (now, action, workspace_id, name, self.dialect.encode_json(detail)),
        )
