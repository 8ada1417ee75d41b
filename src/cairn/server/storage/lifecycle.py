"""The core's workspace lifecycle: whole workspaces deleted and imported, audited server-wide."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cairn.errors import InvalidInput
from cairn.protocol import MAX_SEQ, KeyringBlob, WireMutation
from cairn.server.storage.dialect import Conn
from cairn.server.storage.keyrings import read_versions
from cairn.server.storage.records import (
    Device,
    Quota,
    ServerEvent,
    Workspace,
    keyring_proof_values,
)
from cairn.server.storage.sql import ALL, SqlBase
from cairn.server.storage.workspaces import read_devices

Record = KeyringBlob | Device | WireMutation
"""One record of a workspace being imported."""
_PAGE = 500  # mutations per INSERT of an import

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


@dataclass(frozen=True)
class Exported:
    """A workspace as one snapshot of the database holds it, for an export."""

    latest_seq: int
    quota: Quota
    keyrings: list[KeyringBlob]
    """Every keyring version, oldest first."""
    devices: list[Device]
    mutations: Iterator[WireMutation]
    """The log in seq order, read page by page from the same snapshot while it is open."""


class Lifecycle(SqlBase):
    """Deleting a workspace with every row it owns, and the server-level audit of it."""

    @contextmanager
    def exported(self, workspace_id: str) -> Iterator[Exported]:
        # One read transaction for all of it: a keyring version added, a device registered or
        # a compaction committed during an export is either wholly in it or not at all.
        with self._read(workspace_id, snapshot=True) as conn:
            latest = self._latest(conn, workspace_id)
            rings = read_versions(conn, self.dialect, workspace_id, MAX_SEQ)[::-1]
            devices = read_devices(conn, workspace_id)
            quota = self._quota(conn, workspace_id)
            yield Exported(latest, quota, rings, devices, _log(conn, workspace_id))

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

    def import_workspace(
        self,
        workspace: Workspace,
        quota: Quota,
        latest_seq: int,
        records: Iterable[Record],
        now: int,
        by: str,
    ) -> dict[str, int]:
        # One transaction: a record that fails (the caller checks each as it is read, so a
        # bad one raises here) leaves no trace of the workspace.
        counts = {"keyrings": 0, "devices": 0, "mutations": 0}
        with self._write(ALL) as conn:
            taken = conn.execute(
                "SELECT id, name FROM workspaces WHERE id = ? OR name = ?",
                (workspace.id, workspace.name),
            ).fetchone()
            if taken is not None:
                what = f"id {workspace.id}" if taken[0] == workspace.id else f"name {taken[1]!r}"
                raise InvalidInput(
                    f"this server already has a workspace with the {what}; nothing was imported "
                    "(delete that one first, if it is a stale copy)"
                )
            conn.execute(
                "INSERT INTO workspaces (id, name, mode, created_at, latest_seq, max_mutations, "
                "max_bytes) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (workspace.id, workspace.name, workspace.mode, workspace.created_at, latest_seq)
                + (quota.max_mutations, quota.max_bytes),
            )
            held, page = 0, []
            try:
                for record in records:
                    if isinstance(record, WireMutation):
                        page.append(record)
                        held += len(record.payload)
                        if len(page) == _PAGE:
                            self._insert_log(conn, workspace.id, page, now)
                            page = []
                    elif isinstance(record, Device):
                        self._insert_device(conn, workspace.id, record)
                    else:
                        self._insert_keyring(conn, workspace.id, record)
                    counts[_KIND[type(record)]] += 1
                self._insert_log(conn, workspace.id, page, now)
            except self.unique_violation as exc:
                raise InvalidInput(
                    "the file holds a device, keyring version or mutation twice; nothing was "
                    "imported"
                ) from exc
            conn.execute(
                "UPDATE workspaces SET stored_bytes = ? WHERE id = ?", (held, workspace.id)
            )
            detail = {"by": by, **counts, "latest_seq": latest_seq}
            self._server_audit(
                conn, "workspace_imported", workspace.id, workspace.name, detail, now
            )
        return counts

    def _insert_log(
        self, conn: Conn, workspace_id: str, page: list[WireMutation], now: int
    ) -> None:
        if not page:
            return
        conn.executemany(
            "INSERT INTO mutations (workspace_id, seq, mutation_id, version, device_id, hlc, "
            "entity_id, scope, payload, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (workspace_id, m.seq, m.mutation_id, m.version, m.device_id, m.hlc)
                + (m.entity_id, m.scope, m.payload, now)
                for m in page
            ],
        )

    def _insert_device(self, conn: Conn, workspace_id: str, d: Device) -> None:
        conn.execute(
            "INSERT INTO devices (workspace_id, device_id, name, first_seen, last_seen, pushed, "
            "last_push_at, last_pull_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (workspace_id, d.device_id, d.name, d.first_seen, d.last_seen, d.pushed)
            + (d.last_push_at, d.last_pull_at),
        )

    def _insert_keyring(self, conn: Conn, workspace_id: str, ring: KeyringBlob) -> None:
        conn.execute(
            "INSERT INTO keyring_versions (workspace_id, version, blob, revoked, signature, "
            "verify_key, signed_version) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (workspace_id, ring.version, ring.blob, self.dialect.encode_ints(ring.revoked))
            + keyring_proof_values(ring.proof),
        )

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


_KIND = {KeyringBlob: "keyrings", Device: "devices", WireMutation: "mutations"}


def _log(conn: Conn, workspace_id: str) -> Iterator[WireMutation]:
    """The workspace's log in seq order, a page per query, through ``conn``."""
    since = 0
    while True:
        rows = conn.execute(
            "SELECT seq, mutation_id, version, device_id, hlc, entity_id, scope, payload "
            "FROM mutations WHERE workspace_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (workspace_id, since, _PAGE),
        ).fetchall()
        for seq, mid, version, device, hlc, entity, scope, payload in rows:
            yield WireMutation(mid, device, hlc, entity, scope, bytes(payload), seq, version)
        if len(rows) < _PAGE:
            return
        since = int(rows[-1][0])
