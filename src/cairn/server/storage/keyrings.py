"""The core's keyrings: every version kept, the next one added by compare-and-swap."""

from __future__ import annotations

from collections.abc import Sequence

from cairn.errors import RemoteConflict
from cairn.protocol import KeyringBlob, KeyringProof
from cairn.server.storage.dialect import Conn, Dialect
from cairn.server.storage.records import keyring_of, keyring_proof_values
from cairn.server.storage.sql import SqlBase

_KEYRING_COLUMNS = "version, blob, revoked, signature, verify_key, signed_version"


class Keyrings(SqlBase):
    """Each workspace's keyring versions, newest last; the caller checks each one's proof."""

    def keyring(self, workspace_id: str) -> KeyringBlob | None:
        found = self.keyring_versions(workspace_id, 1)
        return found[0] if found else None

    def keyring_versions(self, workspace_id: str, limit: int) -> list[KeyringBlob]:
        with self._read(workspace_id) as conn:
            return read_versions(conn, self.dialect, workspace_id, limit)

    def put_keyring(
        self,
        workspace_id: str,
        blob: bytes,
        expected_version: int | None,
        revoked: Sequence[int] = (),
        proof: KeyringProof | None = None,
    ) -> int:
        with self._write(workspace_id) as conn:
            self._latest(conn, workspace_id, lock=True)  # NotFound; one keyring writer at a time
            row = conn.execute(
                "SELECT MAX(version) FROM keyring_versions WHERE workspace_id = ?",
                (workspace_id,),
            ).fetchone()
            current = row[0] if row else None
            if current != expected_version:
                raise RemoteConflict(
                    "the keyring changed on the server since it was read; read it again"
                )
            version = (current or 0) + 1
            conn.execute(
                f"INSERT INTO keyring_versions ({_KEYRING_COLUMNS}, workspace_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    version,
                    blob,
                    self.dialect.encode_ints(revoked),
                    *keyring_proof_values(proof),
                    workspace_id,
                ),
            )
        return version


def read_versions(conn: Conn, dialect: Dialect, workspace_id: str, limit: int) -> list[KeyringBlob]:
    """Up to ``limit`` of the workspace's keyring versions, newest first, read through ``conn``."""
    rows = conn.execute(
        f"SELECT {_KEYRING_COLUMNS} FROM keyring_versions WHERE workspace_id = ? "
        "ORDER BY version DESC LIMIT ?",
        (workspace_id, limit),
    ).fetchall()
    decode = dialect.decode_ints
    return [keyring_of(row, decode(row[2]), _blob(row[3]), _blob(row[4])) for row in rows]


def _blob(value: object) -> bytes | None:
    return None if value is None else bytes(value)  # type: ignore[call-overload]
