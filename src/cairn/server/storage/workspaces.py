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

    def touch_key(self, workspace_id: str, key_id: str, now: int) -> None:
        with self._write(workspace_id) as conn:
            conn.execute(
                "UPDATE api_keys SET last_used_at = ? WHERE workspace_id = ? AND id = ?",
                (now, workspace_id, key_id),
            )

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

    def touch_device(
        self, workspace_id: str, device_id: str, now: int, pulled: bool, position: int | None = None
    ) -> None:
        with self._write(workspace_id) as conn:
            self._latest(conn, workspace_id)
            conn.execute(
                "INSERT INTO devices (workspace_id, device_id, name, first_seen, last_seen, "
                "last_pull_at, read_position) VALUES (?, ?, '', ?, ?, ?, ?) "
                "ON CONFLICT (workspace_id, device_id) DO UPDATE SET "
                "last_seen = excluded.last_seen, "
                "last_pull_at = COALESCE(excluded.last_pull_at, devices.last_pull_at), "
                "read_position = COALESCE(excluded.read_position, devices.read_position)",
                (workspace_id, device_id, now, now, now if pulled else None, position),
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


def _key(row: Sequence[Any]) -> ApiKey:
    key_id, workspace_id, name, scopes, created, used, revoked, secret_hash = row
    return ApiKey(
        key_id, workspace_id, name, tuple(scopes.split(",")), created, used, revoked, secret_hash
    )
