"""Sealing and opening one workspace's payloads, and changing its passphrase or data key.

``Envelopes`` seals each payload under the current data key, bound to the keyring, entity and
mutation ids (``cairn.crypto.seal``), opens pulled ones (re-reading the keyring once when
another device rotated), and changes the passphrase or rotates the data key by
compare-and-swap on the remote's keyring. A hosted workspace has no keys: its payloads travel
as they are, because its user chose to let the server read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from cairn.crypto import keyring
from cairn.crypto.seal import Opener, Sealer
from cairn.device_store import Store
from cairn.errors import InvalidInput, KeyMismatch
from cairn.protocol import KeyringBlob, WireMutation
from cairn.remotes.base import Remote
from cairn.sync import payload
from cairn.sync.trust import remember, settle_version


class Envelopes:
    """Seals and opens one workspace's payloads (``keys`` None: a hosted workspace)."""

    def __init__(
        self, remote: Remote, keys: keyring.Unlocked | None, store: Store | None = None
    ) -> None:
        self.remote = remote
        self.keys = keys
        self.store = store
        """Where the last good copy of the keyring is kept (None: nowhere)."""
        self.scope_key = keys.scope_key if keys is not None else payload.HOSTED_SCOPE_KEY
        """The key of blind scope tags: fixed for the workspace's life (rotation keeps it)."""
        self._sealer: Sealer | None = None
        self._opener = Opener(lambda key_id: self._keys().key(key_id))

    def _keys(self) -> keyring.Unlocked:
        if self.keys is None:
            raise InvalidInput(
                f"{self.remote.url} is a hosted workspace: its payloads are not encrypted, so "
                "it has no keyring, passphrase or keys"
            )
        return self.keys

    def _aad(self, entity_id: str, mutation_id: str) -> bytes:
        """What a sealed payload is bound to: this workspace's keyring, its entity and mutation."""
        return f"{self._keys().keyring_id}|{entity_id}|{mutation_id}".encode()

    def seal(self, entity_id: str, mutation_id: str, plain: bytes) -> bytes:
        if self.keys is None:
            return plain
        current = self.keys.current
        if self._sealer is None or self._sealer.key_id != current:
            self._sealer = Sealer(self.keys.data_keys[current], current)
        return self._sealer.seal(plain, self._aad(entity_id, mutation_id))

    def open(self, mutation: WireMutation) -> bytes:
        """The mutation's payload, opened; a key id this device lacks (another device rotated)
        re-reads the remote's keyring once."""
        if self.keys is None:
            return mutation.payload
        aad = self._aad(mutation.entity_id, mutation.mutation_id)
        try:
            return self._opener.open(mutation.payload, aad)
        except KeyMismatch:
            self.refresh()
            return self._opener.open(mutation.payload, aad)

    def reseal(self, mutation: WireMutation) -> WireMutation:
        """The same mutation sealed under the current data key."""
        plain = self.open(mutation)
        return replace(mutation, payload=self.seal(mutation.entity_id, mutation.mutation_id, plain))

    def refresh(self) -> tuple[keyring.Keyring, KeyringBlob, keyring.Unlocked, int]:
        """The keyring version in use (parsed, and as stored), this device's keys refreshed
        from it, and the newest version's number (what a change must replace)."""
        keys = self._keys()
        found, self.keys, newest = settle_version(
            self.store, self.remote, keys.master, keys.keyring_id, keys
        )
        return keyring.Keyring.from_bytes(found.blob), found, self.keys, newest

    def change_passphrase(self, passphrase: str) -> None:
        """Re-wrap the workspace's master key with a new passphrase (no payload changes)."""
        ring, found, keys, newest = self.refresh()
        changed = keyring.change_passphrase(ring, keys, passphrase)
        self._publish(changed, newest, found.revoked)

    def rotate(self, revoke: bool = True) -> dict[str, Any]:
        """Add a data key under a new id; new writes use it, earlier ids stay readable.

        ``revoke``: the remote also refuses new payloads sealed under the earlier ids (a device
        that has not seen the rotation re-reads the keyring and seals again when refused).
        """
        ring, found, keys, newest = self.refresh()
        rotated, self.keys = keyring.rotate(ring, keys)
        earlier = set(rotated.data_keys) - {rotated.current}
        revoked = set(found.revoked) & earlier
        if revoke:
            revoked |= earlier
        self._publish(rotated, newest, sorted(revoked))
        return {"current_key_id": self.keys.current, "revoked_key_ids": sorted(revoked)}

    def _publish(self, ring: keyring.Keyring, newest: int, revoked: Sequence[int]) -> int:
        """Write ``ring`` as the version after ``newest``, signed for that number."""
        keys = self._keys()
        blob = ring.to_bytes()
        proof = keyring.sign(keys.master, keys.keyring_id, newest + 1, blob, revoked)
        version = self.remote.put_keyring(blob, newest, revoked, proof)
        if self.store is not None:
            made = KeyringBlob(blob, version, tuple(sorted(set(revoked))), proof)
            remember(self.store, made, made, None)
        return version
