"""The workspace keyring: data keys wrapped for the people and devices that may read them.

Hierarchy::

    passphrase --Argon2id--> KEK ─┐
                                  ├─ wraps the master key (random, 256-bit)
    recovery key --HKDF----> KEK ─┘        └─ wraps each data key (random, 256-bit, by key id)

A device that joined keeps the master key (never the passphrase). Changing the passphrase
re-wraps only the master key, a few hundred bytes; rotating adds a data key under a new id and
makes it current, and old ids stay readable. The keyring travels to the remote as one opaque
JSON blob; everything secret in it is wrapped, and every wrap is bound to the keyring's id, so a
wrap cannot be moved between keyrings or between slots.

Every version a device writes carries a proof (``cairn.keyring_rules``): an Ed25519 signature by
a key derived from the master key (HKDF), so whoever can write to the remote but lacks the master
key cannot make a version any device accepts (``authenticate``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cairn import keyring_rules
from cairn.errors import CryptoError, InvalidInput, KeyMismatch, KeyringUntrusted, WrongPassphrase
from cairn.protocol import KeyringBlob, KeyringProof

FORMAT = keyring_rules.FORMAT
KEY_BYTES = 32
MIN_PASSPHRASE = 8
"""Characters a workspace passphrase needs at least (a shorter one is refused as bad input)."""
RECOVERY_GROUP = 4
MAX_MEMORY_KIB = 2 * 1024 * 1024
MAX_ITERATIONS = 16
MAX_LANES = 16
"""Bounds on the key derivation a keyring may ask for (the default is 64 MiB, 3 passes, 4
lanes): the keyring comes from the remote, which must not make a device allocate gigabytes
without end or derive for hours."""
MAX_KEY_ID = 2**32 - 1  # a sealed envelope's header holds the key id in 4 bytes
_KEY_ID = re.compile(r"[1-9][0-9]{0,9}")
_KEYRING_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


@dataclass(frozen=True)
class KdfParams:
    """Argon2id parameters, stored with the keyring so later devices derive the same KEK."""

    memory_kib: int = 64 * 1024
    iterations: int = 3
    lanes: int = 4
    salt: bytes = field(default_factory=lambda: os.urandom(16))

    def derive(self, passphrase: str) -> bytes:
        return Argon2id(
            salt=self.salt,
            length=KEY_BYTES,
            iterations=self.iterations,
            lanes=self.lanes,
            memory_cost=self.memory_kib,
        ).derive(passphrase.encode("utf-8"))


@dataclass(frozen=True)
class Keyring:
    """The blob the remote stores: nothing in it opens without the passphrase or recovery key."""

    keyring_id: str
    kdf: KdfParams
    master_by_passphrase: bytes
    master_by_recovery: bytes
    data_keys: dict[int, bytes]  # key id -> data key wrapped by the master key
    current: int

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "format": FORMAT,
                "keyring_id": self.keyring_id,
                "kdf": {
                    "alg": "argon2id",
                    "memory_kib": self.kdf.memory_kib,
                    "iterations": self.kdf.iterations,
                    "lanes": self.kdf.lanes,
                    "salt": _b64(self.kdf.salt),
                },
                "master_by_passphrase": _b64(self.master_by_passphrase),
                "master_by_recovery": _b64(self.master_by_recovery),
                "data_keys": {str(k): _b64(v) for k, v in sorted(self.data_keys.items())},
                "current": self.current,
            },
            indent=1,
        ).encode()

    @classmethod
    def from_bytes(cls, blob: bytes) -> Keyring:
        """The keyring in ``blob`` (read from the remote, so hostile until proven otherwise);
        CryptoError, naming what is wrong, when it is not one this Cairn wrote."""
        try:
            data = json.loads(blob)
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting past the stack
            raise CryptoError(f"the remote's keyring is not readable JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise CryptoError("the remote's keyring is not a JSON object")
        if data.get("format") != FORMAT:
            raise CryptoError(
                f"the remote's keyring has format {data.get('format')!r}; this Cairn reads "
                f"{FORMAT}: upgrade Cairn"
            )
        try:
            kdf = data["kdf"]
            if not isinstance(kdf, dict) or kdf.get("alg") != "argon2id":
                raise CryptoError("the keyring's key derivation is not argon2id")
            lanes = _number(kdf, "lanes", 1, MAX_LANES)
            params = KdfParams(
                _number(kdf, "memory_kib", 8 * lanes, MAX_MEMORY_KIB),
                _number(kdf, "iterations", 1, MAX_ITERATIONS),
                lanes,
                _unb64(kdf["salt"]),
            )
            if not 8 <= len(params.salt) <= 64:
                raise CryptoError("the keyring's kdf.salt is not 8 to 64 bytes")
            keyring_id = data["keyring_id"]
            if not isinstance(keyring_id, str) or not _KEYRING_ID.fullmatch(keyring_id):
                raise CryptoError("the keyring's keyring_id is not 1-64 letters and digits")
            data_keys = data["data_keys"]
            if not isinstance(data_keys, dict):
                raise CryptoError("the keyring's data_keys is not an object")
            keyring = cls(
                keyring_id=keyring_id,
                kdf=params,
                master_by_passphrase=_unb64(data["master_by_passphrase"]),
                master_by_recovery=_unb64(data["master_by_recovery"]),
                data_keys={_key_id(k): _unb64(v) for k, v in data_keys.items()},
                current=_number(data, "current", 1, MAX_KEY_ID),
            )
        except CryptoError as exc:
            raise CryptoError(f"the remote's keyring is not readable: {exc.message}") from exc
        except KeyError as exc:
            raise CryptoError(f"the remote's keyring lacks the field {exc.args[0]!r}") from exc
        except (ValueError, TypeError, binascii.Error) as exc:
            raise CryptoError(f"the remote's keyring is not readable ({exc})") from exc
        if keyring.current not in keyring.data_keys:
            raise CryptoError("the remote's keyring names a current key it does not hold")
        return keyring


@dataclass(frozen=True)
class Unlocked:
    """What a device keeps after joining: the master key and the data keys it opens."""

    keyring_id: str
    master: bytes
    data_keys: dict[int, bytes]
    current: int

    def key(self, key_id: int) -> bytes | None:
        return self.data_keys.get(key_id)

    @property
    def scope_key(self) -> bytes:
        """The key of blind scope tags: fixed for the workspace's life (derived from key 1)."""
        first = self.data_keys[min(self.data_keys)]
        return _hkdf(first, b"cairn scope tags")

    @property
    def frame_key(self) -> bytes:
        """The key that seals object storage's own objects (``cairn.crypto.frames``): fixed
        for the workspace's life, like the scope key."""
        return _hkdf(self.data_keys[min(self.data_keys)], b"cairn object frames")


def create(passphrase: str, kdf: KdfParams | None = None) -> tuple[Keyring, Unlocked, str]:
    """A new keyring with one data key; returns it, its unlocked form and the recovery key
    (to show the user once)."""
    _check_passphrase(passphrase)
    kdf = kdf or KdfParams()
    keyring_id = base64.b32encode(os.urandom(10)).decode().lower()
    master, data_key, recovery = (os.urandom(KEY_BYTES) for _ in range(3))
    keyring = Keyring(
        keyring_id=keyring_id,
        kdf=kdf,
        master_by_passphrase=_wrap(kdf.derive(passphrase), master, keyring_id, b"master/pass"),
        master_by_recovery=_wrap(_recovery_kek(recovery), master, keyring_id, b"master/recovery"),
        data_keys={1: _wrap(master, data_key, keyring_id, b"data/1")},
        current=1,
    )
    return keyring, Unlocked(keyring_id, master, {1: data_key}, 1), format_recovery(recovery)


def unlock(
    keyring: Keyring,
    passphrase: str | None = None,
    recovery: str | None = None,
    keks: dict[KdfParams, bytes] | None = None,
) -> Unlocked:
    """Open the keyring with the passphrase or the recovery key (WrongPassphrase if neither).
    ``keks`` keeps each passphrase-derived key by its parameters, so trying several versions of
    a keyring runs Argon2 once per salt."""
    try:
        if recovery is not None:
            kek, wrapped, slot = (
                _recovery_kek(parse_recovery(recovery)),
                keyring.master_by_recovery,
                b"master/recovery",
            )
        elif passphrase is not None:
            cache = {} if keks is None else keks
            if keyring.kdf not in cache:
                cache[keyring.kdf] = keyring.kdf.derive(passphrase)
            kek, wrapped, slot = (cache[keyring.kdf], keyring.master_by_passphrase, b"master/pass")
        else:
            raise WrongPassphrase("give the workspace's passphrase or its recovery key")
        master = _unwrap(kek, wrapped, keyring.keyring_id, slot)
    except InvalidTag as exc:
        what = "recovery key" if recovery is not None else "passphrase"
        raise WrongPassphrase(
            f"the {what} did not unlock this workspace's keyring; check it and run "
            "`cairn sync setup` again (or use the other of passphrase / recovery key)"
        ) from exc
    return open_data_keys(keyring, master)


def reopen(blob: bytes, master: bytes, keyring_id: str) -> tuple[Keyring, Unlocked]:
    """A keyring blob read back by a device that joined it: KeyMismatch if it is another
    workspace's keyring (another id) or the device's master key does not open it."""
    keyring = Keyring.from_bytes(blob)
    if keyring.keyring_id != keyring_id:
        raise KeyMismatch(
            "the remote's keyring belongs to another workspace than this device joined; "
            "run `cairn sync setup` again to join this one"
        )
    return keyring, open_data_keys(keyring, master)


def open_data_keys(keyring: Keyring, master: bytes) -> Unlocked:
    """Every data key of the keyring, opened by a master key this device already holds."""
    keys = {}
    try:
        for key_id, wrapped in keyring.data_keys.items():
            keys[key_id] = _unwrap(master, wrapped, keyring.keyring_id, b"data/%d" % key_id)
    except InvalidTag as exc:
        raise KeyMismatch(
            "this device's key does not open the remote's keyring: it belongs to another "
            "workspace or was replaced; run `cairn sync setup` again"
        ) from exc
    return Unlocked(keyring.keyring_id, master, keys, keyring.current)


def change_passphrase(keyring: Keyring, unlocked: Unlocked, passphrase: str) -> Keyring:
    """The same keyring with the master key wrapped by a new passphrase (new salt); no data key
    and no payload changes."""
    _check_passphrase(passphrase)
    kdf = replace(keyring.kdf, salt=os.urandom(16))
    wrapped = _wrap(kdf.derive(passphrase), unlocked.master, keyring.keyring_id, b"master/pass")
    return replace(keyring, kdf=kdf, master_by_passphrase=wrapped)


def rotate(keyring: Keyring, unlocked: Unlocked) -> tuple[Keyring, Unlocked]:
    """Add a data key under the next id and make it current; earlier ids stay readable. The id
    is new to the keyring and to ``unlocked`` (which may know ids a rolled-back keyring lost)."""
    key_id = max([*keyring.data_keys, *unlocked.data_keys]) + 1
    data_key = os.urandom(KEY_BYTES)
    wrapped = _wrap(unlocked.master, data_key, keyring.keyring_id, b"data/%d" % key_id)
    new_ring = replace(keyring, data_keys={**keyring.data_keys, key_id: wrapped}, current=key_id)
    return new_ring, Unlocked(
        keyring.keyring_id, unlocked.master, {**unlocked.data_keys, key_id: data_key}, key_id
    )


def verify_key(master: bytes) -> bytes:
    """The workspace's keyring verify key (raw Ed25519), derived from its master key: fixed for
    the workspace's life, since neither a passphrase change nor a rotation changes the master."""
    return _signing_key(master).public_key().public_bytes_raw()


def sign(
    master: bytes, keyring_id: str, version: int, blob: bytes, revoked: Sequence[int]
) -> KeyringProof:
    """The proof that version ``version`` (this blob, these revoked ids) is the workspace's."""
    message = keyring_rules.message(keyring_id, version, blob, revoked)
    return KeyringProof(_signing_key(master).sign(message), verify_key(master), version)


def authenticate(found: KeyringBlob, master: bytes, keyring_id: str) -> tuple[Keyring, Unlocked]:
    """A stored keyring version, opened, if it is this workspace's and signed by its master
    key: KeyringUntrusted (no proof, a forged one, or one naming another version), KeyMismatch
    (another workspace's keyring), CryptoError (not a keyring)."""
    if found.proof is None:
        raise KeyringUntrusted(f"keyring version {found.version} carries no proof")
    if found.proof.verify_key != verify_key(master) or not keyring_rules.verifies(
        found.proof, keyring_id, found.blob, found.revoked
    ):
        raise KeyringUntrusted(
            f"keyring version {found.version} is not signed by this workspace's master key"
        )
    return reopen(found.blob, master, keyring_id)


def format_recovery(key: bytes) -> str:
    """A recovery key a person can write down: base32 in dash-separated groups of four."""
    text = base64.b32encode(key).decode().rstrip("=")
    check = base64.b32encode(hashlib.sha256(key).digest()[:5]).decode()[:4]
    groups = [text[i : i + RECOVERY_GROUP] for i in range(0, len(text), RECOVERY_GROUP)]
    return "-".join([*groups, check])


def parse_recovery(text: str) -> bytes:
    """The key in a recovery key as typed (case, spaces and dashes do not matter)."""
    clean = "".join(ch for ch in text.upper() if ch.isascii() and ch.isalnum())
    body, check = clean[:-4], clean[-4:]
    try:
        key = base64.b32decode(body + "=" * (-len(body) % 8))
    except binascii.Error as exc:
        raise WrongPassphrase("that is not a recovery key (letters A-Z and digits 2-7)") from exc
    if len(key) != KEY_BYTES or format_recovery(key).replace("-", "")[-4:] != check:
        raise WrongPassphrase("that recovery key is mistyped (its check letters do not match)")
    return key


def _check_passphrase(passphrase: str) -> None:
    if len(passphrase) < MIN_PASSPHRASE:
        raise InvalidInput(
            f"a passphrase needs at least {MIN_PASSPHRASE} characters; a few words is best"
        )


def _hkdf(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(key)


def _signing_key(master: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(_hkdf(master, b"cairn keyring signing key"))


def _recovery_kek(recovery: bytes) -> bytes:
    return _hkdf(recovery, b"cairn recovery kek")


def _wrap(kek: bytes, secret: bytes, keyring_id: str, slot: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(kek).encrypt(nonce, secret, keyring_id.encode() + b"|" + slot)


def _unwrap(kek: bytes, wrapped: bytes, keyring_id: str, slot: bytes) -> bytes:
    if len(wrapped) < 12 + 16:
        raise InvalidTag()
    return AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], keyring_id.encode() + b"|" + slot)


def _number(table: dict[str, Any], key: str, low: int, high: int) -> int:
    """An integer field of the keyring, within bounds (never a float, a string or a bool)."""
    value = table[key]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise CryptoError(f"the keyring's {key} is not an integer from {low} to {high}")
    return value


def _key_id(text: str) -> int:
    """A data key's id as the keyring writes it: decimal ASCII digits, no leading zero."""
    if not _KEY_ID.fullmatch(text) or int(text) > MAX_KEY_ID:
        raise CryptoError(f"the keyring holds a key id {text!r} that is not 1 to {MAX_KEY_ID}")
    return int(text)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise TypeError("expected base64 text")
    return base64.b64decode(text, validate=True)
