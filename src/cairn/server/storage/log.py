"""The core's mutation log: idempotent all-or-nothing pushes, gapless seqs, paged pulls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cairn.errors import InvalidInput
from cairn.protocol import PullPage, PushResult, WireMutation
from cairn.server.storage.dialect import Conn
from cairn.server.storage.records import Totals, WorkspaceStats, check_quota, day_of
from cairn.server.storage.sql import ALL, SqlBase

MAX_SCOPES = 1000
_MUTATION_COLUMNS = (
    "workspace_id, seq, mutation_id, version, device_id, hlc, entity_id, scope, payload, "
    "received_at"
)


class MutationLog(SqlBase):
    """Each workspace's log of mutations, numbered 1, 2, 3... in commit order."""

    def push(
        self,
        workspace_id: str,
        mutations: Sequence[WireMutation],
        device_id: str | None,
        now: int,
        key_id: str | None = None,
    ) -> PushResult:
        # The workspace's row is held (or SQLite's one writer is) until commit: pushes to one
        # workspace number their mutations one after another, and a failed push takes its
        # numbers with it, so seqs stay gapless.
        with self._write(workspace_id) as conn:
            seq = self._latest(conn, workspace_id, lock=True)
            stored_ids = self._stored_ids(conn, workspace_id, {m.mutation_id for m in mutations})
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
                conn.executemany(
                    f"INSERT INTO mutations ({_MUTATION_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                conn.execute(
                    "UPDATE workspaces SET latest_seq = ?, stored_bytes = stored_bytes + ? "
                    "WHERE id = ?",
                    (seq, added, workspace_id),
                )
            conn.execute(
                "INSERT INTO usage_days (workspace_id, day, pushes, mutations, bytes) "
                "VALUES (?, ?, 1, ?, ?) ON CONFLICT (workspace_id, day) DO UPDATE SET "
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
                    "pushed, last_push_at) VALUES (?, ?, '', ?, ?, ?, ?) "
                    "ON CONFLICT (workspace_id, device_id) DO UPDATE SET "
                    "last_seen = excluded.last_seen, pushed = devices.pushed + excluded.pushed, "
                    "last_push_at = excluded.last_push_at",
                    (workspace_id, device_id, now, now, len(rows), now),
                )
        return PushResult(len(rows), len(mutations) - len(rows), seq)

    def _stored_ids(self, conn: Conn, workspace_id: str, ids: set[str]) -> set[str]:
        """Which of these mutation ids the workspace already holds."""
        found: set[str] = set()
        for chunk in self._chunks(ids):
            clause, params = self._in("mutation_id", chunk)
            found.update(
                row[0]
                for row in conn.execute(
                    f"SELECT mutation_id FROM mutations WHERE workspace_id = ? AND {clause}",
                    (workspace_id, *params),
                )
            )
        return found

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
            clause, params = self._in("scope", wanted)
            sql += f" AND (scope IS NULL OR {clause})"
            args.extend(params)
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        # One snapshot for the page and the latest seq: the cursor cannot pass an unseen row.
        with self._read(workspace_id, snapshot=True) as conn:
            latest = self._latest(conn, workspace_id)
            rows = conn.execute(sql, args).fetchall()
        page = [
            WireMutation(mid, device, hlc, entity, scope, bytes(payload), seq, version)
            for seq, mid, version, device, hlc, entity, scope, payload in rows
        ]
        return PullPage.of(page, limit, latest)

    def latest_seq(self, workspace_id: str) -> int:
        with self._read(workspace_id) as conn:
            return self._latest(conn, workspace_id)

    def stats(self, workspace_id: str) -> WorkspaceStats:
        with self._read(workspace_id, snapshot=True) as conn:
            latest = self._latest(conn, workspace_id)
            row = conn.execute(
                "SELECT (SELECT COUNT(*) FROM mutations WHERE workspace_id = ?), "
                "(SELECT COUNT(*) FROM devices WHERE workspace_id = ?)",
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
