"""What makes a keyring version trustworthy. Devices and every remote that can check (the sync
server, the in-memory remote) check it alike.

A version's proof is an Ed25519 signature by a key derived from the workspace's master key
(``cairn.crypto.keyring.sign``) over ``message``: the keyring format, the keyring's id, the
version's number, the SHA-256 of the blob and the revoked key ids. Only a holder of the master
key can make one. Because it names the number, an older version sent again as the next one
fails; because it names the keyring id, another workspace's keyring fails; because it covers the
revoked ids, they cannot be changed beside a genuine blob.

A remote that checks (``accept``) keeps the verify key of its current version (trust on first
use: the first signed version sets it) and takes a next version only with a proof under that key
for exactly the next number, of a blob that is a keyring of the same id whose revoked ids are
key ids of that keyring other than its current one. Devices do not trust the published verify
key at all: they derive their own from the master key they hold.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cairn.errors import InvalidInput, KeyMismatch, KeyringUntrusted
from cairn.protocol import KeyringBlob, KeyringProof

FORMAT = "cairn-keyring/1"
"""The keyring blob's format (``cairn.crypto.keyring``): named in every proof."""
PROOF_CONTEXT = b"cairn keyring proof v1\n"
MAX_KEYRING_BYTES = 1024 * 1024
MAX_KEY_ID = 0xFFFFFFFF
SIGNATURE_BYTES = 64
VERIFY_KEY_BYTES = 32
_KEYRING_ID = re.compile(r"[a-z0-9]{1,64}", re.ASCII)
_KEY_ID = re.compile(r"[0-9]{1,10}", re.ASCII)


@dataclass(frozen=True)
class Facts:
    """What a keyring blob says in clear (every key in it stays wrapped)."""

    keyring_id: str
    key_ids: frozenset[int]
    current: int


def facts(blob: bytes) -> Facts:
    """The clear facts of a keyring blob; InvalidInput when it is not a Cairn keyring."""
    if len(blob) > MAX_KEYRING_BYTES:
        raise InvalidInput(f"a keyring is at most {MAX_KEYRING_BYTES} bytes")
    try:
        data = json.loads(blob)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput("the keyring blob is not a Cairn keyring (not JSON)") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InvalidInput(f"the keyring blob is not a Cairn keyring of format {FORMAT}")
    keyring_id, keys, current = data.get("keyring_id"), data.get("data_keys"), data.get("current")
    if not isinstance(keyring_id, str) or not _KEYRING_ID.fullmatch(keyring_id):
        raise InvalidInput("the keyring blob has no valid keyring_id")
    if not isinstance(keys, dict) or not all(
        isinstance(k, str) and _KEY_ID.fullmatch(k) and 1 <= int(k) <= MAX_KEY_ID for k in keys
    ):
        raise InvalidInput("the keyring blob's data key ids must be numbers")
    key_ids = frozenset(int(k) for k in keys)
    if not _is_int(current) or current not in key_ids:
        raise InvalidInput("the keyring blob names a current key it does not hold")
    return Facts(keyring_id, key_ids, current)


def message(keyring_id: str, version: int, blob: bytes, revoked: Collection[int]) -> bytes:
    """The bytes a version's proof signs."""
    body = {
        "format": FORMAT,
        "keyring_id": keyring_id,
        "version": version,
        "blob_sha256": hashlib.sha256(blob).hexdigest(),
        "revoked_key_ids": sorted(set(revoked)),
    }
    return PROOF_CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def verifies(proof: KeyringProof, keyring_id: str, blob: bytes, revoked: Collection[int]) -> bool:
    """Whether ``proof`` signs this blob and revoked list as version ``proof.version`` of the
    keyring ``keyring_id``, under ``proof.verify_key``."""
    try:
        key = Ed25519PublicKey.from_public_bytes(proof.verify_key)
        key.verify(proof.signature, message(keyring_id, proof.version, blob, revoked))
    except (InvalidSignature, ValueError):
        return False
    return True


def check_revoked(found: Facts, revoked: Collection[int]) -> None:
    """InvalidInput unless every revoked id is a key id of the keyring other than its current."""
    stray = set(revoked) - (found.key_ids - {found.current})
    if stray:
        raise InvalidInput(
            f"revoked key ids must be earlier key ids of the keyring; {sorted(stray)[:5]} are "
            "not (a keyring never revokes its current key)"
        )


def accept(
    current: KeyringBlob | None,
    blob: bytes,
    revoked: Collection[int],
    signature: bytes | None,
    verify_key: bytes | None,
    admin: bool = False,
) -> KeyringProof | None:
    """The proof to store with the version that follows ``current`` (None: there is none yet),
    or the error that refuses it.

    Refused: a blob that is not a keyring (InvalidInput), a keyring with another id than the
    current one (KeyMismatch), revoked ids that are not earlier key ids of it (InvalidInput), and
    a version without a valid proof under the current version's verify key (KeyringUntrusted).
    While no verify key is kept (the first version, or one made before keyrings were signed) a
    proof under the verify key it brings sets it; without a proof, only the first version, or an
    admin key, may change the keyring.
    """
    found = facts(blob)
    check_revoked(found, revoked)
    if current is not None:
        try:
            before = facts(current.blob).keyring_id
        except InvalidInput:
            before = None  # a damaged version (made before this check): the proof decides
        if before is not None and before != found.keyring_id:
            raise KeyMismatch(
                "this blob is another workspace's keyring; a keyring keeps its id for life"
            )
    pinned = current.proof.verify_key if current is not None and current.proof else None
    if signature is None or verify_key is None:
        if pinned is None and (current is None or admin):
            return None
        raise KeyringUntrusted(
            "a keyring change needs a proof made with the workspace's master key (upgrade Cairn "
            "on this device: it signs every keyring version it writes)"
        )
    if pinned is not None and verify_key != pinned:
        raise KeyringUntrusted(
            "this keyring version is signed with another key than the workspace's; only a "
            "device holding the workspace's master key can change its keyring"
        )
    proof = KeyringProof(signature, verify_key, (current.version if current else 0) + 1)
    if not verifies(proof, found.keyring_id, blob, revoked):
        raise KeyringUntrusted(
            "the keyring version's proof does not verify (forged, or made for another version "
            "or revoked list); only a device holding the workspace's master key can change it"
        )
    return proof


def proof_fields(proof: KeyringProof | None) -> dict[str, Any]:
    """A proof as JSON fields beside a keyring (none: made before keyrings were signed)."""
    if proof is None:
        return {"signature": None, "verify_key": None, "signed_version": None}
    return {
        "signature": proof.signature.hex(),
        "verify_key": proof.verify_key.hex(),
        "signed_version": proof.version,
    }


def proof_from(data: dict[str, Any], version: int) -> KeyringProof | None:
    """The proof in JSON fields ``proof_fields`` wrote (``version``: the number it names when
    the fields do not say); None when there is none; InvalidInput when they are malformed."""
    signature, verify_key = data.get("signature"), data.get("verify_key")
    if signature is None and verify_key is None:
        return None
    signed = data.get("signed_version", version)
    if not _is_int(signed) or not 1 <= signed <= version:
        raise InvalidInput("signed_version must be a version number up to the version's own")
    return KeyringProof(
        _hex(signature, SIGNATURE_BYTES, "signature"),
        _hex(verify_key, VERIFY_KEY_BYTES, "verify_key"),
        signed,
    )


def _hex(text: Any, size: int, name: str) -> bytes:
    if not isinstance(text, str) or not re.fullmatch(f"[0-9a-f]{{{2 * size}}}", text, re.ASCII):
        raise InvalidInput(f"{name} must be {size} bytes in lowercase hex")
    return bytes.fromhex(text)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
