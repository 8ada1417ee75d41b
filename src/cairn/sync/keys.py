"""A workspace's keys on this device: joining its keyring, and sealing and opening its payloads.

``join`` creates the keyring on the remote (first device) or unlocks it with the passphrase or
recovery key; ``open_keys`` reopens it later with the master key the device kept. ``Envelopes``
seals each payload under the current data key, bound to the keyring, entity and mutation ids
(``cairn.crypto.seal``), opens pulled ones (re-reading the keyring once when another device
rotated), and changes the passphrase or rotates the data key by compare-and-swap on the remote's
keyring. A hosted workspace has no keys: its payloads travel as they are, because its user chose
to let the server read them.

A device uses only keyring versions it can authenticate (``cairn.crypto.keyring.authenticate``:
signed by the workspace's master key for their own number). When the newest does not
authenticate, it takes the newest that does, else keeps its last good copy (store meta), and
records why (``keyring_problem``: reason ``keyring_untrusted``) for ``cairn sync status``. It
never forgets a data key it once opened, so nothing it could read turns unreadable. A keyring
made before versions were signed is used as long as this device has never seen a signed one,
and is then signed and published again by it (the upgrade).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from cairn import keyring_rules
from cairn.crypto import keyring
from cairn.crypto.frames import Frames
from cairn.crypto.seal import Opener, Sealer
from cairn.device_store import Store
from cairn.errors import (
    CryptoError,
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
from cairn.store import replica
from cairn.sync import payload

KEYRING = "sync.keyring"
"""Store meta: the last keyring version this device accepted (its last good copy)."""
KEYRING_PROBLEM = "sync.keyring_problem"
"""Store meta: why the remote's newest keyring version is not the one in use (JSON), if so."""
UNTRUSTED = "keyring_untrusted"


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
                    found, unlocked = _first_trusted([newest], passphrase, recovery, keks)
                    return _opened(remote, unlocked), None
            except CryptoError:
                pass
            versions = remote.keyring_versions()
            found, unlocked = _first_trusted(versions or [newest], passphrase, recovery, keks)
            if found.proof is None:
                _upgrade(remote, found, unlocked, max(v.version for v in versions or [newest]))
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


def _first_trusted(
    versions: list[KeyringBlob],
    passphrase: str | None,
    recovery: str | None,
    keks: dict[keyring.KdfParams, bytes],
) -> tuple[KeyringBlob, keyring.Unlocked]:
    """The newest version that opens with the passphrase (or recovery key) and is signed by
    the master key it holds; else the newest unsigned one that opens, if no older one is
    signed; else the error that stopped the newest (a wrong passphrase first). A passphrase
    that opens only a version older than one its master key signed was changed since: it is
    refused, as it was before versions were kept."""
    legacy: tuple[KeyringBlob, keyring.Unlocked] | None = None
    failures: list[CryptoError] = []
    chosen: tuple[KeyringBlob, keyring.Unlocked] | None = None
    for found in versions:
        if legacy is not None and found.proof is None:
            continue
        try:
            ring = keyring.Keyring.from_bytes(found.blob)
            unlocked = keyring.unlock(ring, passphrase, recovery, keks)
            if found.proof is None:
                legacy = legacy or (found, unlocked)
                continue
            keyring.authenticate(found, unlocked.master, ring.keyring_id)
        except CryptoError as exc:
            failures.append(exc)
            continue
        chosen = found, unlocked
        break
    chosen = chosen or legacy
    if chosen is None:
        wrong = [f for f in failures if isinstance(f, WrongPassphrase)]
        raise (wrong or failures or [CryptoError("the remote's keyring is not readable")])[0]
    found, unlocked = chosen
    for newer in versions:
        if newer.version <= found.version:
            break
        if _authentic(newer, unlocked):
            raise WrongPassphrase(
                "that passphrase opens only an earlier version of this workspace's keyring: it "
                "was changed since. Use the current passphrase or the recovery key"
            )
    return chosen


def open_keys(store: Store, remote: Remote, master: bytes, keyring_id: str) -> keyring.Unlocked:
    """The data keys of a device that joined: its master key opens the newest keyring version
    it can authenticate (or its last good copy, kept in the store, when the remote does not
    answer or holds no version it can authenticate)."""
    try:
        keys = settle(store, remote, master, keyring_id)
    except RemoteUnreachable:
        cached = _cached(store)
        if cached is None:
            raise  # a transient failure: nothing says the keyring is gone
        keys = keyring.reopen(cached.blob, master, keyring_id)[1]
    return _opened(remote, keys)


def settle(
    store: Store | None,
    remote: Remote,
    master: bytes,
    keyring_id: str,
    known: keyring.Unlocked | None = None,
) -> keyring.Unlocked:
    """Read the remote's keyring and settle on the version to use (see the module's doc); the
    keys, with every data key this device knew (``known``, the last good copy) kept."""
    return _settle(store, remote, master, keyring_id, known)[1]


def _settle(
    store: Store | None,
    remote: Remote,
    master: bytes,
    keyring_id: str,
    known: keyring.Unlocked | None,
) -> tuple[KeyringBlob, keyring.Unlocked, int]:
    """(the version in use, its keys merged with those known, the newest version's number)."""
    newest = remote.get_keyring()
    cached = _cached(store) if store is not None else None
    if newest is None:
        if cached is None:
            raise SyncNotConfigured(
                f"no keyring on {remote.url} and none cached here; run `cairn sync setup` again"
            )
        newest = cached  # a remote emptied of keyrings: the last good copy still opens
    allow_unsigned = cached is None or cached.proof is None
    found, unlocked, problem = _trusted(remote, newest, master, keyring_id, allow_unsigned)
    if found is None or unlocked is None:
        if cached is None:
            assert problem is not None
            raise problem
        found, unlocked = cached, keyring.reopen(cached.blob, master, keyring_id)[1]
    if found.proof is None and problem is None:
        upgraded = _upgrade(remote, found, unlocked, newest.version)
        found = upgraded or found
    for earlier in (known, _cached_keys(cached, master, keyring_id)):
        if earlier is not None:
            unlocked = replace(unlocked, data_keys={**earlier.data_keys, **unlocked.data_keys})
    if store is not None:
        _remember(store, found, newest, problem)
    return found, unlocked, max(newest.version, found.version)


def _trusted(
    remote: Remote, newest: KeyringBlob, master: bytes, keyring_id: str, allow_unsigned: bool
) -> tuple[KeyringBlob | None, keyring.Unlocked | None, CryptoError | None]:
    """The newest version this device can authenticate (looking back when the newest is not
    one), its keys, and why the newest was passed over (None: it was not)."""
    try:
        return newest, keyring.authenticate(newest, master, keyring_id)[1], None
    except CryptoError as exc:
        problem = exc
    if newest.proof is None and allow_unsigned:
        try:  # a keyring made before versions were signed, and this device never saw one
            return newest, keyring.reopen(newest.blob, master, keyring_id)[1], None
        except CryptoError:
            pass
    for older in remote.keyring_versions():
        if older.version >= newest.version:
            continue
        try:
            return older, keyring.authenticate(older, master, keyring_id)[1], problem
        except CryptoError:
            continue
    return None, None, problem


def _upgrade(
    remote: Remote, found: KeyringBlob, keys: keyring.Unlocked, newest: int
) -> KeyringBlob | None:
    """Publish an unsigned version again, signed, as the next version (its revoked ids kept
    only where they are earlier key ids of it); the signed version, or None when the remote
    did not take it (another device changed the keyring first, an old server, a read-only
    key): the next device with the master key tries again."""
    try:
        facts = keyring_rules.facts(found.blob)
    except InvalidInput:
        return None
    revoked = sorted(set(found.revoked) & (facts.key_ids - {facts.current}))
    proof = keyring.sign(keys.master, keys.keyring_id, newest + 1, found.blob, revoked)
    try:
        version = remote.put_keyring(found.blob, newest, revoked, proof)
    except (SyncError, InvalidInput):
        return None
    return KeyringBlob(found.blob, version, tuple(revoked), proof)


def _remember(
    store: Store, found: KeyringBlob, newest: KeyringBlob, problem: CryptoError | None
) -> None:
    """Keep ``found`` as the last good copy, and why the newest version is not it (if not)."""
    why = None
    if problem is not None:
        why = json.dumps(
            {
                "reason": UNTRUSTED,
                "code": problem.code,
                "version": newest.version,
                "using": found.version,
                "message": f"keyring version {newest.version} on the remote is not used: "
                f"{problem.message}; this device uses version {found.version}, its newest "
                "trusted one (an administrator can roll the keyring back, or a device with "
                "the master key can publish a new version)",
            }
        )
    with store.db.write() as conn:
        replica.set_meta(conn, KEYRING, json.dumps(_to_record(found)))
        replica.set_meta(conn, KEYRING_PROBLEM, why)


def keyring_problem(store: Store) -> dict[str, Any] | None:
    """Why this device does not use the remote's newest keyring version (None: it does)."""
    with store.db.read() as conn:
        raw = replica.get_meta(conn, KEYRING_PROBLEM)
    try:
        found = json.loads(raw) if raw else None
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def _cached(store: Store | None) -> KeyringBlob | None:
    """The last good copy (a bare base64 blob: written before versions were signed)."""
    if store is None:
        return None
    with store.db.read() as conn:
        raw = replica.get_meta(conn, KEYRING)
    if not raw:
        return None
    try:
        if not raw.startswith("{"):
            return KeyringBlob(base64.b64decode(raw, validate=True), 0)
        data = json.loads(raw)
        version = int(data["version"])
        return KeyringBlob(
            base64.b64decode(data["blob"], validate=True),
            version,
            tuple(int(k) for k in data["revoked_key_ids"]),
            keyring_rules.proof_from(data, version),
        )
    except (ValueError, KeyError, TypeError, binascii.Error, InvalidInput):
        return None  # not one this version wrote: as if there were none


def _to_record(found: KeyringBlob) -> dict[str, Any]:
    return {
        "blob": base64.b64encode(found.blob).decode("ascii"),
        "version": found.version,
        "revoked_key_ids": list(found.revoked),
        **keyring_rules.proof_fields(found.proof),
    }


def _cached_keys(
    cached: KeyringBlob | None, master: bytes, keyring_id: str
) -> keyring.Unlocked | None:
    if cached is None:
        return None
    try:
        return keyring.reopen(cached.blob, master, keyring_id)[1]
    except CryptoError:
        return None


def _opened(remote: Remote, keys: keyring.Unlocked) -> keyring.Unlocked:
    """Keys just opened for ``remote``: a remote that stores objects of its own (a bucket, a
    folder) seals them with the workspace's frame key from now on, and takes revoked key ids
    only from keyring versions these keys authenticate."""
    remote.set_frames(Frames(keys.frame_key))
    remote.set_keyring_check(lambda found: _authentic(found, keys))
    return keys


def _authentic(found: KeyringBlob, keys: keyring.Unlocked) -> bool:
    """Whether ``found`` is a version of this workspace's keyring signed by its master key."""
    try:
        keyring.authenticate(found, keys.master, keys.keyring_id)
    except CryptoError:
        return False
    return True


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
        found, self.keys, newest = _settle(
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
            _remember(self.store, made, made, None)
        return version
