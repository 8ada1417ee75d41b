"""Sealed payloads: AES-256-GCM under derived keys that never repeat a nonce, in an envelope.

Envelope (version 1)::

    version (1 byte) | key_id (uint32 big-endian) | salt (16) | nonce (12) | ciphertext + tag (16)

A ``Sealer`` derives its own AES key from the data key, HMAC-SHA256(data key, label | random
16-byte salt) (the data key is uniformly random, so this one PRF call is HKDF's expand step
without the extract step it does not need), and seals every payload it is given under that key
with a nonce that counts up from zero. A derived key belongs to one sealer only, so a nonce can
never repeat under one key, however many devices seal or however often a mutation is retried;
random 96-bit nonces under the long-lived data key would instead bound how many messages are
safe. One derivation per sealer rather than per message is what keeps sealing a few µs per
memory (``bench/bench_crypto.py``); an ``Opener`` likewise keeps the keys it derived, by salt.

The header and the caller's associated data (workspace, entity and mutation ids) are
authenticated: a payload altered, truncated, or moved to another slot fails to open.

Compression is the payload codec's business (it knows the text compresses and the vector does
not); sealing adds 49 bytes and nothing else.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cairn.errors import KeyMismatch, PayloadTampered
from cairn.protocol import SEALED_HEADER, SEALED_MIN, SEALED_VERSION

VERSION = SEALED_VERSION
HEADER = SEALED_HEADER
KEY_BYTES = 32
MAX_PER_KEY = 2**32
"""Payloads one derived key seals before its sealer draws a new salt (far below GCM's limits)."""
_INFO = b"cairn payload v1"
_OPENER_CACHE = 256
_KEY_AND_SALT = slice(1, 21)  # the header's key id and salt: what a derived key depends on
_NONCE = slice(21, HEADER.size)


def _derive(data_key: bytes, salt: bytes) -> AESGCM:
    return AESGCM(hmac.digest(data_key, _INFO + salt, "sha256"))


class Sealer:
    """Seals payloads under one data key; not thread-safe (one per sealing thread)."""

    def __init__(self, data_key: bytes, key_id: int) -> None:
        if len(data_key) != KEY_BYTES:
            raise ValueError("a data key is 32 bytes")
        self.key_id = key_id
        self._data_key = data_key
        self._rekey()

    def _rekey(self) -> None:
        self._salt = os.urandom(16)
        self._aead = _derive(self._data_key, self._salt)
        self._count = 0

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt ``plaintext`` bound to ``aad``, under a nonce this derived key never used."""
        if self._count >= MAX_PER_KEY:
            self._rekey()
        nonce = self._count.to_bytes(12, "big")
        self._count += 1
        header = HEADER.pack(VERSION, self.key_id, self._salt, nonce)
        return header + self._aead.encrypt(nonce, plaintext, header + aad)


class Opener:
    """Opens envelopes with the data keys ``keys`` hands out by id, keeping recent derivations."""

    def __init__(self, keys: Callable[[int], bytes | None]) -> None:
        self._keys = keys
        self._derived: dict[bytes, AESGCM] = {}  # by the header's key id and salt bytes

    def open(self, envelope: bytes, aad: bytes) -> bytes:
        """The plaintext; PayloadTampered / KeyMismatch when it cannot be trusted."""
        if len(envelope) < SEALED_MIN or envelope[0] != VERSION:
            raise PayloadTampered(
                "a sealed payload is truncated or of an unknown envelope version; it was not "
                "applied"
            )
        aead = self._derived.get(envelope[_KEY_AND_SALT])
        if aead is None:
            aead = self._derive_for(envelope)
        try:
            return aead.decrypt(
                envelope[_NONCE], envelope[HEADER.size :], envelope[: HEADER.size] + aad
            )
        except InvalidTag as exc:
            raise PayloadTampered(
                "a sealed payload failed authentication (altered, truncated or moved to another "
                "entry); it was not applied"
            ) from exc

    def _derive_for(self, envelope: bytes) -> AESGCM:
        _version, key_id, salt, _nonce = HEADER.unpack_from(envelope)
        data_key = self._keys(key_id)
        if data_key is None:
            raise KeyMismatch(
                f"a payload is sealed with key {key_id}, which this device does not have; "
                "run `cairn sync setup` again to re-read the workspace's keyring"
            )
        if len(self._derived) >= _OPENER_CACHE:
            self._derived.clear()
        aead = self._derived[envelope[_KEY_AND_SALT]] = _derive(data_key, salt)
        return aead


def seal(data_key: bytes, key_id: int, plaintext: bytes, aad: bytes) -> bytes:
    """Seal one payload under a key of its own (``Sealer`` for many)."""
    return Sealer(data_key, key_id).seal(plaintext, aad)


def open_sealed(keys: Callable[[int], bytes | None], envelope: bytes, aad: bytes) -> bytes:
    """Open one envelope (``Opener`` for many)."""
    return Opener(keys).open(envelope, aad)
