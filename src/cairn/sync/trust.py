"""Which keyring version a device trusts: authenticating versions and keeping the last good copy.

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
from dataclasses import replace
from typing import Any

from cairn import keyring_rules
from cairn.crypto import keyring
from cairn.device_store import Store
from cairn.errors import (
    CryptoError,
    InvalidInput,
    SyncError,
    SyncNotConfigured,
    WrongPassphrase,
)
from cairn.protocol import KeyringBlob
from cairn.remotes.base import Remote

UNTRUSTED = "keyring_untrusted"


def first_trusted(
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
        if authentic(newer, unlocked):
            raise WrongPassphrase(
                "that passphrase opens only an earlier version of this workspace's keyring: it "
                "was changed since. Use the current passphrase or the recovery key"
            )
    return chosen


def settle(
    store: Store | None,
    remote: Remote,
    master: bytes,
    keyring_id: str,
    known: keyring.Unlocked | None = None,
) -> keyring.Unlocked:
    """Read the remote's keyring and settle on the version to use (see the module's doc); the
    keys, with every data key this device knew (``known``, the last good copy) kept."""
    return settle_version(store, remote, master, keyring_id, known)[1]


def settle_version(
    store: Store | None,
    remote: Remote,
    master: bytes,
    keyring_id: str,
    known: keyring.Unlocked | None,
) -> tuple[KeyringBlob, keyring.Unlocked, int]:
    """(the version in use, its keys merged with those known, the newest version's number)."""
    newest = remote.get_keyring()
    cached = cached_copy(store) if store is not None else None
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
        upgraded = upgrade(remote, found, unlocked, newest.version)
        found = upgraded or found
    for earlier in (known, _cached_keys(cached, master, keyring_id)):
        if earlier is not None:
            unlocked = replace(unlocked, data_keys={**earlier.data_keys, **unlocked.data_keys})
    if store is not None:
        remember(store, found, newest, problem)
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


def upgrade(
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


def remember(
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
    store.sync_state.remember_keyring(json.dumps(_to_record(found)), why)


def keyring_problem(store: Store) -> dict[str, Any] | None:
    """Why this device does not use the remote's newest keyring version (None: it does)."""
    raw = store.sync_state.keyring_problem()
    try:
        found = json.loads(raw) if raw else None
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def cached_copy(store: Store | None) -> KeyringBlob | None:
    """The last good copy (a bare base64 blob: written before versions were signed)."""
    if store is None:
        return None
    raw = store.sync_state.keyring_copy()
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


def authentic(found: KeyringBlob, keys: keyring.Unlocked) -> bool:
    """Whether ``found`` is a version of this workspace's keyring signed by its master key."""
    try:
        keyring.authenticate(found, keys.master, keys.keyring_id)
    except CryptoError:
        return False
    return True
