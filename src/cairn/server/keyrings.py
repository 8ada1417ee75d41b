"""The sync server's keyring verbs: add a version, list them, roll back. Every one is audited.

Its routes and its admin CLI call them.

The server keeps every version. A new one is taken only as ``cairn.keyring_rules.accept``
allows: after the first, with a proof by the workspace's master key for exactly the next number
(so a write key without that key cannot change the keyring at all). A rollback stores an earlier
version again as the next one, with that version's own proof (which still names the number it
was signed under: devices accept such a copy from a server, never from a bucket).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Any

from cairn import keyring_rules
from cairn.errors import InvalidInput, NotFound, RemoteConflict
from cairn.protocol import KeyringBlob
from cairn.server import keys
from cairn.server.storage import ApiKey, ServerStorage


def put(
    storage: ServerStorage,
    key: ApiKey,
    blob: bytes,
    expected_version: int | None,
    revoked: Sequence[int],
    signature: bytes | None,
    verify_key: bytes | None,
    now: int,
) -> int:
    """Add the next keyring version if ``accept`` takes it; the new version's number."""
    workspace = key.workspace_id
    current = storage.keyring(workspace)
    if (current.version if current else None) != expected_version:
        raise RemoteConflict("the keyring changed on the server since it was read; read it again")
    admin = keys.grants(key.scopes, "admin")
    proof = keyring_rules.accept(current, blob, revoked, signature, verify_key, admin)
    version = storage.put_keyring(workspace, blob, expected_version, revoked, proof)
    detail: dict[str, Any] = {
        "version": version,
        "revoked_key_ids": sorted(set(revoked)),
        "signed": proof is not None,
    }
    if proof is not None and (current is None or current.proof is None):
        detail["pinned_verify_key"] = proof.verify_key.hex()  # trust on first use, on record
    storage.audit(workspace, key.id, "keyring_put", detail, now)
    return version


def rollback(
    storage: ServerStorage,
    workspace_id: str,
    key_id: str | None,
    to_version: int,
    expected_version: int | None,
    now: int,
    by: str = "api",
) -> KeyringBlob:
    """Store version ``to_version`` again as the next version (what an administrator does when
    the newest one is wrong); ``expected_version`` None: whatever is newest now."""
    current = storage.keyring(workspace_id)
    if current is None:
        raise NotFound("this workspace has no keyring yet: there is nothing to roll back")
    if expected_version is not None and expected_version != current.version:
        raise RemoteConflict("the keyring changed on the server since it was read; read it again")
    if not 1 <= to_version < current.version:
        raise InvalidInput(
            f"roll back to an earlier version: 1 to {current.version - 1} "
            f"(version {current.version} is the newest)"
        )
    restored = storage.keyring_versions(workspace_id, current.version - to_version + 1)[-1]
    if restored.version != to_version:
        raise NotFound(f"keyring version {to_version} is not stored")
    version = storage.put_keyring(
        workspace_id, restored.blob, current.version, restored.revoked, restored.proof
    )
    detail = {"version": version, "restored": to_version, "replaced": current.version, "by": by}
    storage.audit(workspace_id, key_id, "keyring_rollback", detail, now)
    return KeyringBlob(restored.blob, version, restored.revoked, restored.proof)


def to_json(found: KeyringBlob) -> dict[str, Any]:
    """A keyring version on the wire: the blob (base64), its number, revoked ids and proof."""
    return {
        "blob": base64.b64encode(found.blob).decode("ascii"),
        "version": found.version,
        "revoked_key_ids": list(found.revoked),
        **keyring_rules.proof_fields(found.proof),
    }


def summary(found: KeyringBlob) -> dict[str, Any]:
    """A keyring version as an administrator lists it (no blob: its size and digest)."""
    return {
        "version": found.version,
        "bytes": len(found.blob),
        "sha256": hashlib.sha256(found.blob).hexdigest(),
        "revoked_key_ids": list(found.revoked),
        "signed": found.proof is not None,
        "signed_version": found.proof.version if found.proof else None,
        "verify_key": found.proof.verify_key.hex() if found.proof else None,
    }
