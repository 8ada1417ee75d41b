"""The core's log retention: superseded mutations dropped once every active reader passed them.

A workspace's retention policy (off unless set) names how many days a device stays an *active
reader* after its last pull. Compacting drops a mutation when both hold:

- **superseded**: a later mutation (higher seq) of the same entity, from the same device, in
  the same scope tag, carries a later clock. A device's state of an entity only grows (merges
  are joins, local edits tick its clock), so what it sent later holds what it sent before; the
  later clock proves the later state was read after the earlier one (two of the device's
  processes can push out of order). A later state from *another* device may lack this one (it
  had not pulled it, or could not open it), and the server cannot read sealed payloads to tell,
  so it never supersedes. The scope tag is kept apart so a device pulling some scopes only
  gets what it got before. What a hosted workspace's server itself wrote (for agents over
  HTTP, ``protocol.SERVER_DEVICE_PREFIX``) is always kept: concurrent requests in one process
  each build a state from the index as it was, so a later one may lack an earlier one.
- **passed**: its seq is at most the *horizon*, the least read position (the cursor of its
  last pull) of the workspace's active readers (a reader whose position is not known yet holds
  everything), and of a hosted workspace's search index. With no active reader, the log's end.

Dropping only superseded mutations keeps every reader convergent whatever its cursor: one that
reads past a dropped mutation later reads the mutation that superseded it. The horizon keeps
active readers from meeting the gaps at all. Seqs are never reused; pulls already page by seq,
not by count, so a gap needs nothing from any client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cairn.errors import InvalidInput
from cairn.protocol import HOSTED, SERVER_DEVICE_PREFIX
from cairn.server.storage.dialect import Conn
from cairn.server.storage.records import DAY_MS
from cairn.server.storage.sql import ALL, SqlBase

MAX_ACTIVE_DAYS = 3650
_SCAN_PAGE = 5000


@dataclass(frozen=True)
class Compaction:
    """What one compaction of a workspace's log did."""

    workspace_id: str
    active_days: int
    horizon: int
    """The seq every active reader had read past; nothing after it was dropped."""
    readers: int
    """Active readers (devices that pulled within ``active_days``)."""
    scanned: int
    removed: int
    removed_bytes: int
    mutations: int
    """Mutations the log holds after."""
    stored_bytes: int
    """Payload bytes the log holds after."""


def check_active_days(days: int) -> int:
    if not 1 <= days <= MAX_ACTIVE_DAYS:
        raise InvalidInput(f"active days must be between 1 and {MAX_ACTIVE_DAYS}")
    return days


class Retention(SqlBase):
    """Each workspace's retention policy, and the compaction that applies it."""

    def set_retention(self, workspace_id: str, active_days: int | None) -> None:
        if active_days is not None:
            check_active_days(active_days)
        with self._write(workspace_id) as conn:
            self._latest(conn, workspace_id)
            conn.execute(
                "UPDATE workspaces SET retention_days = ? WHERE id = ?",
                (active_days, workspace_id),
            )

    def retention(self, workspace_id: str) -> int | None:
        with self._read(workspace_id) as conn:
            self._latest(conn, workspace_id)
            row = conn.execute(
                "SELECT retention_days FROM workspaces WHERE id = ?", (workspace_id,)
            ).fetchone()
        return None if row[0] is None else int(row[0])

    def retained(self) -> list[tuple[str, int]]:
        rows = self._all(
            ALL,
            "SELECT id, retention_days FROM workspaces WHERE retention_days IS NOT NULL "
            "ORDER BY created_at, id",
        )
        return [(str(row[0]), int(row[1])) for row in rows]

    def compact(
        self, workspace_id: str, now: int, active_days: int, by: str, key_id: str | None = None
    ) -> Compaction:
        check_active_days(active_days)
        # One write transaction holding the workspace (SQLite: the one writer): no push can add
        # a mutation between the scan and the deletion. Pulls read on from their snapshots.
        with self._write(workspace_id) as conn:
            latest = self._latest(conn, workspace_id, lock=True)
            horizon, readers = self._horizon(conn, workspace_id, now - active_days * DAY_MS)
            horizon = min(horizon, latest)
            scanned, doomed, freed = self._superseded(conn, workspace_id, horizon)
            for chunk in self._chunks(doomed):
                clause, params = self._in("seq", chunk)
                conn.execute(
                    f"DELETE FROM mutations WHERE workspace_id = ? AND {clause}",
                    (workspace_id, *params),
                )
            conn.execute(
                "UPDATE workspaces SET stored_bytes = stored_bytes - ? WHERE id = ?",
                (freed, workspace_id),
            )
            stored = self._bytes(conn, workspace_id)
            made = Compaction(
                workspace_id, active_days, horizon, readers, scanned, len(doomed), freed,
                scanned - len(doomed), stored,
            )  # fmt: skip
            detail: dict[str, Any] = {
                "removed": made.removed,
                "removed_bytes": freed,
                "horizon": horizon,
                "readers": readers,
                "active_days": active_days,
                "by": by,
            }
            self._audit(conn, workspace_id, key_id, "compact", detail, now)
        return made

    def _horizon(self, conn: Conn, workspace_id: str, since: int) -> tuple[int, int]:
        """The least read position of the readers active ``since`` then (and of a hosted
        index), and how many readers that is; the log's end when there is none."""
        row = conn.execute(
            "SELECT MIN(COALESCE(read_position, 0)), COUNT(*) FROM devices "
            "WHERE workspace_id = ? AND last_pull_at >= ?",
            (workspace_id, since),
        ).fetchone()
        least = None if row is None or row[0] is None else int(row[0])
        readers = 0 if row is None else int(row[1])
        mode = conn.execute("SELECT mode FROM workspaces WHERE id = ?", (workspace_id,)).fetchone()
        if mode is not None and mode[0] == HOSTED:  # its search index reads the log too
            position = self._position(conn, workspace_id)
            least = position if least is None else min(least, position)
        return (self._latest(conn, workspace_id) if least is None else least), readers

    def _superseded(
        self, conn: Conn, workspace_id: str, horizon: int
    ) -> tuple[int, list[int], int]:
        """How many mutations the log holds, the seqs of the superseded ones at or below
        ``horizon``, and their payloads' bytes; read newest first, page by page."""
        later: dict[tuple[str, str, str | None], str] = {}  # group -> the latest clock after
        doomed: list[int] = []
        freed = scanned = 0
        before = self._latest(conn, workspace_id) + 1
        while True:
            rows = conn.execute(
                "SELECT seq, entity_id, device_id, scope, hlc, length(payload) FROM mutations "
                "WHERE workspace_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                (workspace_id, before, _SCAN_PAGE),
            ).fetchall()
            for seq, entity_id, device_id, scope, hlc, size in rows:
                if device_id.startswith(SERVER_DEVICE_PREFIX):
                    continue  # a hosted server's states: see SERVER_DEVICE_PREFIX
                group = (entity_id, device_id, scope)
                newest = later.get(group)
                # Packed clocks are fixed-width: string order is clock order (cairn.hlc).
                if newest is not None and newest > hlc and seq <= horizon:
                    doomed.append(int(seq))
                    freed += int(size)
                elif newest is None or hlc > newest:
                    later[group] = hlc
            scanned += len(rows)
            if len(rows) < _SCAN_PAGE:
                return scanned, doomed, freed
            before = int(rows[-1][0])
