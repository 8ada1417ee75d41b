"""Sealed payloads: AES-256-GCM under a fresh key per message, in a versioned envelope.

Envelope (version 1)::

    version (1 byte) | key_id (uint32 big-endian) | salt (16) | nonce (12) | ciphertext + tag (16)

Each message gets its own AES key, HMAC-SHA256(data key, label | random 16-byte salt): the data
key is uniformly random, so this one PRF call is HKDF's expand step without the extract step it
does not need. A nonce can therefore never repeat under one
key (a retried mutation may carry different bytes
under the same ids; random 96-bit nonces under one long-lived key would bound how many messages
are safe). The header and the caller's associated data (workspace, entity and mutation ids) are
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
from cairn.protocol import SEALED_HEADER, SEALED_VERSION, sealed_key_id

VERSION = SEALED_VERSION
HEADER = SEALED_HEADER
KEY_BYTES = 32
_INFO = b"cairn payload v1"


def _message_key(data_key: bytes, salt: bytes) -> AESGCM:
    return AESGCM(hmac.digest(data_key, _INFO + salt, "sha256"))


def seal(data_key: bytes, key_id: int, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt ``plaintext`` under a key of its own, bound to ``aad``."""
    if len(data_key) != KEY_BYTES:
        raise ValueError("a data key is 32 bytes")
    salt, nonce = os.urandom(16), os.urandom(12)
    header = HEADER.pack(VERSION, key_id, salt, nonce)
    return header + _message_key(data_key, salt).encrypt(nonce, plaintext, header + aad)


def open_sealed(keys: Callable[[int], bytes | None], envelope: bytes, aad: bytes) -> bytes:
    """The plaintext of an envelope; PayloadTampered / KeyMismatch when it cannot be trusted."""
    key_id = sealed_key_id(envelope)
    if key_id is None:
        raise PayloadTampered(
            "a sealed payload is truncated or of an unknown envelope version; it was not applied"
        )
    data_key = keys(key_id)
    if data_key is None:
        raise KeyMismatch(
            f"a payload is sealed with key {key_id}, which this device does not have; "
            "run `cairn sync setup` again to re-read the workspace's keyring"
        )
    _version, _key_id, salt, nonce = HEADER.unpack_from(envelope)
    head = envelope[: HEADER.size]
    try:
        return _message_key(data_key, salt).decrypt(nonce, envelope[HEADER.size :], head + aad)
    except InvalidTag as exc:
        raise PayloadTampered(
            "a sealed payload failed authentication (altered, truncated or moved to another "
            "entry); it was not applied"
        ) from exc
