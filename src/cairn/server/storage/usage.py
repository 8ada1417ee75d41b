"""The core's metering, quotas and audit log: what each workspace holds, did and may hold."""

from __future__ import annotations

from typing import Any

from cairn.protocol import RELATION_PREFIX
from cairn.server.storage.dialect import Conn
from cairn.server.storage.records import (
    DAY_MS,
    HOUR_MS,
    ActivityHour,
    AuditEntry,
    Quota,
    Usage,
    UsageDay,
    day_of,
)
from cairn.server.storage.sql import ALL, SqlBase


class Metering(SqlBase):
    """Usage per UTC day, quotas, and who (which API key) did what."""

    def record_pull(self, workspace_id: str, key_id: str, pulled: int, now: int) -> None:
        with self._write(workspace_id, durable=False) as conn:
            conn.execute(
                "INSERT INTO usage_days (workspace_id, day, pulled) VALUES (?, ?, ?) "
                "ON CONFLICT (workspace_id, day) DO UPDATE SET "
                "pulled = usage_days.pulled + excluded.pulled",
                (workspace_id, day_of(now), pulled),
            )
            self._audit(conn, workspace_id, key_id, "pull", {"mutations": pulled}, now)

    def record_recall(
        self, workspace_id: str, key_id: str, detail: dict[str, Any], now: int
    ) -> None:
        with self._write(workspace_id, durable=False) as conn:
            self._latest(conn, workspace_id)
            conn.execute(
                "INSERT INTO usage_days (workspace_id, day, recalls) VALUES (?, ?, 1) "
                "ON CONFLICT (workspace_id, day) DO UPDATE SET recalls = usage_days.recalls + 1",
                (workspace_id, day_of(now)),
            )
            self._audit(conn, workspace_id, key_id, "recall", detail, now)

    def set_quota(self, workspace_id: str, quota: Quota) -> None:
        with self._write(workspace_id) as conn:
            self._latest(conn, workspace_id)
            conn.execute(
                "UPDATE workspaces SET max_mutations = ?, max_bytes = ? WHERE id = ?",
                (quota.max_mutations, quota.max_bytes, workspace_id),
            )

    def usage(self, workspace_id: str, days: int, now: int) -> Usage:
        with self._read(workspace_id, snapshot=True) as conn:
            latest = self._latest(conn, workspace_id)
            row = conn.execute(
                "SELECT COUNT(DISTINCT entity_id), COUNT(DISTINCT CASE WHEN entity_id "
                f"NOT LIKE '{RELATION_PREFIX}%' THEN entity_id END) FROM mutations "
                "WHERE workspace_id = ?",
                (workspace_id,),
            ).fetchone()
            return Usage(
                latest,
                self._bytes(conn, workspace_id),
                int(row[0]) if row else 0,
                int(row[1]) if row else 0,
                self._quota(conn, workspace_id),
                self._days(conn, workspace_id, days, now),
            )

    def usage_days(self, workspace_id: str, days: int, now: int) -> list[UsageDay]:
        with self._read(workspace_id) as conn:
            return self._days(conn, workspace_id, days, now)

    @staticmethod
    def _days(conn: Conn, workspace_id: str, days: int, now: int) -> list[UsageDay]:
        rows = conn.execute(
            "SELECT day, pushes, mutations, bytes, pulled, recalls FROM usage_days "
            "WHERE workspace_id = ? AND day >= ? ORDER BY day DESC",
            (workspace_id, day_of(now - (days - 1) * DAY_MS)),
        ).fetchall()
        return [UsageDay(*r) for r in rows]

    def audit(
        self, workspace_id: str, key_id: str | None, action: str, detail: dict[str, Any], now: int
    ) -> None:
        with self._write(workspace_id) as conn:
            self._latest(conn, workspace_id)
            self._audit(conn, workspace_id, key_id, action, detail, now)

    def audit_log(
        self,
        workspace_id: str,
        limit: int,
        before: int | None,
        action: str | None = None,
        key_id: str | None = None,
    ) -> list[AuditEntry]:
        where, args = "", []
        for column, value in (("action", action), ("key_id", key_id)):
            if value is not None:
                where += f" AND {column} = ?"
                args.append(value)
        rows = self._all(
            workspace_id,
            "SELECT at, key_id, action, detail FROM audit WHERE workspace_id = ? "
            f"AND at < ?{where} ORDER BY at DESC, {self.dialect.audit_order} DESC LIMIT ?",
            workspace_id,
            before if before is not None else 2**62,
            *args,
            limit,
        )
        decode = self.dialect.decode_json
        return [AuditEntry(at, key, action, decode(detail)) for at, key, action, detail in rows]

    def activity(self, workspace_id: str, since: int) -> list[ActivityHour]:
        stored = self.dialect.json_int("detail", "stored")
        rows = self._all(
            workspace_id,
            f"SELECT at / {HOUR_MS} AS hour, "
            "SUM(CASE WHEN action = 'push' THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN action = 'pull' THEN 1 ELSE 0 END), "
            f"SUM(CASE WHEN action = 'push' THEN {stored} ELSE 0 END) "
            "FROM audit WHERE workspace_id = ? AND at >= ? AND action IN ('push', 'pull') "
            "GROUP BY hour ORDER BY hour",
            workspace_id,
            since,
        )
        return [ActivityHour(int(h) * HOUR_MS, int(a), int(b), int(c or 0)) for h, a, b, c in rows]

    def schema_version(self) -> int:
        row = self._one(ALL, self.dialect.schema_version)
        return int(row[0]) if row else 0
