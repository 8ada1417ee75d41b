"""The core's workspaces, API keys and devices: who may sync, and who did."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cairn.errors import InvalidInput, NotFound
from cairn.protocol import E2E
from cairn.server.storage.dialect import Conn
from cairn.server.storage.records import ApiKey, Device, Quota, Workspace, WorkspaceSummary
from cairn.server.storage.sql import ALL, SqlBase

_KEY_COLUMNS = "id, workspace_id, name, scopes, created_at, last_used_at, revoked_at, secret_hash"
_DEVICE_COLUMNS = (
    "device_id, name, first_seen, last_seen, pushed, last_push_at, last_pull_at, read_position"
)
_WORKSPACE = "SELECT id, name, mode, created_at FROM workspaces"
_SUMMARY = (
    "SELECT id, name, mode, created_at, latest_seq, stored_bytes, max_mutations, max_bytes "
    "FROM workspaces"
)
SEEN_ROWS = 1000
"""Rows of ``record_seen`` per statement (3 or 4 parameters each)."""
Row = tuple[Any, ...]


class Workspaces(SqlBase):
    """Workspaces (each named once), their API keys and their devices."""

    def create_workspace(
        self, workspace_id: str, name: str, now: int, mode: str = E2E
    ) -> Workspace:
        try:
            with self._write(ALL) as conn:
                taken = conn.execute("SELECT 1 FROM workspaces WHERE name = ?", (name,))
                if taken.fetchone() is None:
                    conn.execute(
                        "INSERT INTO workspaces (id, name, mode, created_at) VALUES (?, ?, ?, ?)",
                        (workspace_id, name, mode, now),
                    )
                    return Workspace(workspace_id, name, mode, now)
        except self.unique_violation:
            pass  # another process created it at the same moment
        raise InvalidInput(
            f"a workspace named {name!r} already exists; pick another name "
            "(`cairn server workspace list` shows them)"
        )

    def workspace(self, name: str) -> Workspace:
        row = self._one(ALL, f"{_WORKSPACE} WHERE name = ?", name)
        if row is None:
            raise NotFound(f"no workspace named {name!r}; `cairn server workspace list` shows them")
        return Workspace(*row)

    def workspace_by_id(self, workspace_id: str) -> Workspace:
        row = self._one(workspace_id, f"{_WORKSPACE} WHERE id = ?", workspace_id)
        if row is None:
            raise NotFound(f"no workspace with id {workspace_id!r}")
        return Workspace(*row)

    def workspaces(self) -> list[Workspace]:
        return [Workspace(*row) for row in self._all(ALL, f"{_WORKSPACE} ORDER BY created_at, id")]

    def summaries(self) -> list[WorkspaceSummary]:
        rows = self._all(ALL, f"{_SUMMARY} ORDER BY created_at, id")
        return [_summary(row) for row in rows]

    def summary(self, workspace_id: str) -> WorkspaceSummary:
        row = self._one(workspace_id, f"{_SUMMARY} WHERE id = ?", workspace_id)
        if row is None:
            raise NotFound(f"no workspace with id {workspace_id!r}")
        return _summary(row)

    # -- API keys -----------------------------------------------------------------------------

    def add_key(self, key: ApiKey) -> None:
        with self._write(key.workspace_id) as conn:
            conn.execute(
                f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.id,
                    key.workspace_id,
                    key.name,
                    ",".join(key.scopes),
                    key.created_at,
                    key.last_used_at,
                    key.revoked_at,
                    key.secret_hash,
                ),
            )

    def find_key(self, key_id: str) -> ApiKey | None:
        # The one lookup across workspaces: a request's key is how its workspace is known.
        row = self._one(ALL, f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", key_id)
        return _key(row) if row else None

    def find_keys(self, key_ids: Sequence[str]) -> dict[str, ApiKey]:
        found: dict[str, ApiKey] = {}
        with self._read(ALL) as conn:
            for chunk in self._chunks(key_ids):
                clause, params = self._in("id", chunk)
                rows = conn.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE {clause}", params)
                found.update((key.id, key) for key in map(_key, rows))
        return found

    def keys(self, workspace_id: str) -> list[ApiKey]:
        rows = self._all(
            workspace_id,
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE workspace_id = ? ORDER BY created_at, id",
            workspace_id,
        )
        return [_key(row) for row in rows]

    def revoke_key(self, workspace_id: str, key_id: str, now: int) -> ApiKey:
        with self._write(workspace_id) as conn:
            conn.execute(
                "UPDATE api_keys SET revoked_at = ? "
                "WHERE workspace_id = ? AND id = ? AND revoked_at IS NULL",
                (now, workspace_id, key_id),
            )
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE workspace_id = ? AND id = ?",
                (workspace_id, key_id),
            ).fetchone()
        if row is None:
            raise NotFound(f"this workspace has no API key {key_id!r}; list them to check the id")
        return _key(row)

    # -- devices ------------------------------------------------------------------------------

    def register_device(self, workspace_id: str, device_id: str, name: str, now: int) -> None:
        with self._write(workspace_id) as conn:
            self._latest(conn, workspace_id)
            conn.execute(
                "INSERT INTO devices (workspace_id, device_id, name, first_seen, last_seen) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (workspace_id, device_id) DO UPDATE SET "
                "name = excluded.name, last_seen = excluded.last_seen",
                (workspace_id, device_id, name, now, now),
            )

    def remove_device(self, workspace_id: str, device_id: str) -> bool:
        with self._write(workspace_id) as conn:
            gone = conn.execute(
                "DELETE FROM devices WHERE workspace_id = ? AND device_id = ?",
                (workspace_id, device_id),
            )
            return bool(gone.rowcount)

    def record_seen(
        self,
        keys: Sequence[tuple[str, str, int]],
        devices: Sequence[tuple[str, str, int, int | None]],
    ) -> None:
        # One transaction over every workspace, one statement per table (per chunk of rows):
        # a process's last-seen bookkeeping for an interval, however many devices it served.
        # A time only moves forward (another process may have written a later one).
        with self._write(ALL, durable=False) as conn:
            for chunk in _batches(sorted(keys)):
                conn.execute(
                    "UPDATE api_keys SET last_used_at = v.column3 "
                    f"FROM (VALUES {_rows(chunk)}) AS v "
                    "WHERE api_keys.workspace_id = v.column1 AND api_keys.id = v.column2 "
                    "AND (api_keys.last_used_at IS NULL OR api_keys.last_used_at < v.column3)",
                    [value for row in chunk for value in row],
                )
            for rows in _batches(sorted(devices, key=lambda row: row[:3])):
                conn.execute(
                    "INSERT INTO devices (workspace_id, device_id, name, first_seen, last_seen, "
                    "last_pull_at, read_position) SELECT v.column1, v.column2, '', v.column3, "
                    "v.column3, v.column3, CAST(v.column4 AS BIGINT) "
                    f"FROM (VALUES {_rows(rows)}) AS v "
                    "WHERE EXISTS (SELECT 1 FROM workspaces WHERE workspaces.id = v.column1) "
                    "ON CONFLICT (workspace_id, device_id) DO UPDATE SET "
                    "last_seen = CASE WHEN excluded.last_seen > devices.last_seen "
                    "THEN excluded.last_seen ELSE devices.last_seen END, "
                    # The newest pull's read position counts (None keeps the one recorded).
                    "read_position = CASE WHEN excluded.read_position IS NULL "
                    "THEN devices.read_position WHEN devices.last_pull_at IS NULL "
                    "OR excluded.last_pull_at >= devices.last_pull_at "
                    "THEN excluded.read_position ELSE devices.read_position END, "
                    "last_pull_at = CASE WHEN devices.last_pull_at IS NULL "
                    "OR excluded.last_pull_at > devices.last_pull_at "
                    "THEN excluded.last_pull_at ELSE devices.last_pull_at END",
                    [value for row in rows for value in row],
                )

    def devices(self, workspace_id: str) -> list[Device]:
        with self._read(workspace_id) as conn:
            return read_devices(conn, workspace_id)


def read_devices(conn: Conn, workspace_id: str) -> list[Device]:
    """The workspace's devices, first seen first, read through ``conn``."""
    rows = conn.execute(
        f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE workspace_id = ? "
        "ORDER BY first_seen, device_id",
        (workspace_id,),
    ).fetchall()
    return [Device(*row) for row in rows]


def _summary(row: Sequence[Any]) -> WorkspaceSummary:
    return WorkspaceSummary(Workspace(*row[:4]), row[4], row[5], Quota(row[6], row[7]))


def _batches(rows: list[Row]) -> list[list[Row]]:
    """``rows`` by ``SEEN_ROWS``: within both databases' limits on parameters per statement."""
    return [rows[at : at + SEEN_ROWS] for at in range(0, len(rows), SEEN_ROWS)]


def _rows(chunk: Sequence[Row]) -> str:
    """The placeholders of a VALUES list of rows as long as the first."""
    marks = "(" + ", ".join(["?"] * len(chunk[0])) + ")"
    return ", ".join([marks] * len(chunk))


def _key(row: Sequence[Any]) -> ApiKey:
    key_id, workspace_id, name, scopes, created, used, revoked, secret_hash = row
    return ApiKey(
        key_id, workspace_id, name, tuple(scopes.split(",")), created, used, revoked, secret_hash
    )
