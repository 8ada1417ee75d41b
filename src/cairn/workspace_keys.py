"""A workspace's keys on this device: joining its keyring, and sealing and opening its payloads.

``join`` creates the keyring on the remote (first device) or unlocks it with the passphrase or
recovery key; ``open_keys`` reopens it later with the master key the device kept. ``Envelopes``
seals each payload under the current data key, bound to the keyring, entity and mutation ids
(``cairn.crypto.seal``), opens pulled ones (re-reading the keyring once when another device
rotated), and changes the passphrase or rotates the data key by compare-and-swap on the remote's
keyring. A hosted workspace has no keys: its payloads travel as they are, because its user chose
to let the server read them.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

from cairn.crypto import keyring
from cairn.crypto.frames import Frames
from cairn.crypto.seal import Opener, Sealer
from cairn.errors import (
    InvalidInput,
    KeyMismatch,
    RemoteConflict,
    RemoteUnreachable,
    SyncError,
    SyncNotConfigured,
    WrongPassphrase,
)
from cairn.protocol import KeyringBlob, WireMutation
from cairn.remotes.base import Remote
from cairn.service import Store
from cairn.store import replica
from cairn.sync import payload

KEYRING = "sync.keyring"
"""Store meta: the keyring blob last read from the remote, for when the remote does not answer."""


def join(
    remote: Remote,
    passphrase: str | None = None,
    recovery: str | None = None,
    kdf: keyring.KdfParams | None = None,
) -> tuple[keyring.Unlocked, str | None]:
    """Open the workspace's keyring with the passphrase or recovery key; when the remote has
    none yet, create it with ``passphrase``. Returns the keys and, only when the keyring was
    just created, the recovery key to show the user once."""
    for _attempt in range(3):
        found = remote.get_keyring()
        if found is not None:
            ring = keyring.Keyring.from_bytes(found.blob)
            return _opened(remote, keyring.unlock(ring, passphrase, recovery)), None
        if passphrase is None:
            raise WrongPassphrase(
                "this workspace has no keyring yet; give a passphrase to create it "
                "(the recovery key only opens an existing one)"
            )
        ring, unlocked, recovery_key = keyring.create(passphrase, kdf)
        try:
            remote.put_keyring(ring.to_bytes(), None)
        except RemoteConflict:
            continue  # another device made it first: join theirs
        return _opened(remote, unlocked), recovery_key
    raise SyncError(f"the keyring on {remote.url} keeps changing; retry in a moment")


def open_keys(store: Store, remote: Remote, master: bytes, keyring_id: str) -> keyring.Unlocked:
    """The data keys of a device that joined: its master key opens the remote's keyring (or
    the copy cached in the store when the remote does not answer)."""
    offline: RemoteUnreachable | None = None
    try:
        found = remote.get_keyring()
        blob = found.blob if found is not None else None
    except RemoteUnreachable as exc:
        blob, offline = None, exc
    with store.db.read() as conn:
        cached = replica.get_meta(conn, KEYRING)
    if blob is None and cached is None:
        if offline is not None:
            raise offline  # a transient failure: nothing says the keyring is gone
        raise SyncNotConfigured(
            f"no keyring on {remote.url} and none cached here; run `cairn sync setup` again"
        )
    chosen = blob if blob is not None else base64.b64decode(cached or "")
    _ring, unlocked = keyring.reopen(chosen, master, keyring_id)
    if blob is not None:
        with store.db.write() as conn:
            replica.set_meta(conn, KEYRING, base64.b64encode(blob).decode())
    return _opened(remote, unlocked)


def _opened(remote: Remote, keys: keyring.Unlocked) -> keyring.Unlocked:
    """Keys just opened for ``remote``: a remote that stores objects of its own (a bucket, a
    folder) seals them with the workspace's frame key from now on."""
    remote.set_frames(Frames(keys.frame_key))
    return keys


class Envelopes:
    """Seals and opens one workspace's payloads (``keys`` None: a hosted workspace)."""

    def __init__(self, remote: Remote, keys: keyring.Unlocked | None) -> None:
        self.remote = remote
        self.keys = keys
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

    def refresh(self) -> tuple[keyring.Keyring, KeyringBlob, keyring.Unlocked]:
        """The remote's keyring as stored, and this device's keys refreshed from it."""
        keys = self._keys()
        found = self.remote.get_keyring()
        if found is None:
            raise SyncNotConfigured(f"{self.remote.url} has no keyring; run `cairn sync setup`")
        ring, self.keys = keyring.reopen(found.blob, keys.master, keys.keyring_id)
        return ring, found, self.keys

    def change_passphrase(self, passphrase: str) -> None:
        """Re-wrap the workspace's master key with a new passphrase (no payload changes)."""
        ring, found, keys = self.refresh()
        changed = keyring.change_passphrase(ring, keys, passphrase)
        self.remote.put_keyring(changed.to_bytes(), found.version, found.revoked)

    def rotate(self, revoke: bool = True) -> dict[str, Any]:
        """Add a data key under a new id; new writes use it, earlier ids stay readable.

        ``revoke``: the remote also refuses new payloads sealed under the earlier ids (a device
        that has not seen the rotation re-reads the keyring and seals again when refused).
        """
        ring, found, keys = self.refresh()
        rotated, self.keys = keyring.rotate(ring, keys)
        revoked = set(found.revoked)
        if revoke:
            revoked |= set(rotated.data_keys) - {rotated.current}
        self.remote.put_keyring(rotated.to_bytes(), found.version, sorted(revoked))
        return {"current_key_id": self.keys.current, "revoked_key_ids": sorted(revoked)}
