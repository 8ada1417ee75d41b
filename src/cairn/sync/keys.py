"""Joining a workspace's keyring on this device: creating it, unlocking it, reopening it later.

``join`` creates the keyring on the remote (first device) or unlocks it with the passphrase or
recovery key; ``open_keys`` reopens it later with the master key the device kept. Which
version is trusted is ``cairn.sync.trust``'s rule; sealing and opening payloads is
``cairn.sync.envelopes``'s.
"""

from __future__ import annotations

from cairn.crypto import keyring
from cairn.crypto.frames import Frames
from cairn.device_store import Store
from cairn.errors import (
    CryptoError,
    RemoteConflict,
    RemoteUnreachable,
    SyncError,
    WrongPassphrase,
)
from cairn.remotes.base import Remote
from cairn.sync.trust import authentic, cached_copy, first_trusted, settle, upgrade


def join(
    remote: Remote,
    passphrase: str | None = None,
    recovery: str | None = None,
    kdf: keyring.KdfParams | None = None,
) -> tuple[keyring.Unlocked, str | None]:
    """Open the workspace's keyring with the passphrase or recovery key; when the remote has
    none yet, create it with ``passphrase``. Returns the keys and, only when the keyring was
    just created, the recovery key to show the user once.

    The versions are tried newest first: the newest that opens and is signed by the master key
    it holds is taken (an unsigned one only when no version is signed: a keyring made before
    versions were signed, which this device then signs)."""
    keks: dict[keyring.KdfParams, bytes] = {}  # one Argon2 run per passphrase salt
    for _attempt in range(3):
        newest = remote.get_keyring()
        if newest is not None:
            try:  # the usual case, in one request: the newest opens and is signed
                if newest.proof is not None:
                    found, unlocked = first_trusted([newest], passphrase, recovery, keks)
                    return _opened(remote, unlocked), None
            except CryptoError:
                pass
            versions = remote.keyring_versions()
            found, unlocked = first_trusted(versions or [newest], passphrase, recovery, keks)
            if found.proof is None:
                upgrade(remote, found, unlocked, max(v.version for v in versions or [newest]))
            return _opened(remote, unlocked), None
        if passphrase is None:
            raise WrongPassphrase(
                "this workspace has no keyring yet; give a passphrase to create it "
                "(the recovery key only opens an existing one)"
            )
        ring, unlocked, recovery_key = keyring.create(passphrase, kdf)
        blob = ring.to_bytes()
        try:
            proof = keyring.sign(unlocked.master, ring.keyring_id, 1, blob, ())
            remote.put_keyring(blob, None, (), proof)
        except RemoteConflict:
            continue  # another device made it first: join theirs
        return _opened(remote, unlocked), recovery_key
    raise SyncError(f"the keyring on {remote.url} keeps changing; retry in a moment")


def open_keys(store: Store, remote: Remote, master: bytes, keyring_id: str) -> keyring.Unlocked:
    """The data keys of a device that joined: its master key opens the newest keyring version
    it can authenticate (or its last good copy, kept in the store, when the remote does not
    answer or holds no version it can authenticate)."""
    try:
        keys = settle(store, remote, master, keyring_id)
    except RemoteUnreachable:
        cached = cached_copy(store)
        if cached is None:
            raise  # a transient failure: nothing says the keyring is gone
        keys = keyring.reopen(cached.blob, master, keyring_id)[1]
    return _opened(remote, keys)


def _opened(remote: Remote, keys: keyring.Unlocked) -> keyring.Unlocked:
    """Keys just opened for ``remote``: a remote that stores objects of its own (a bucket, a
    folder) seals them with the workspace's frame key from now on, and takes revoked key ids
    only from keyring versions these keys authenticate."""
    remote.set_frames(Frames(keys.frame_key))
    remote.set_keyring_check(lambda found: authentic(found, keys))
    return keys
