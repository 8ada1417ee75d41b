"""The keyring versions in an object remote: one object each, written only if absent."""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Sequence
from typing import Any

from obstore.exceptions import AlreadyExistsError

from cairn import keyring_rules
from cairn.errors import InvalidInput, RemoteConflict, SyncError
from cairn.protocol import KeyringBlob, KeyringProof
from cairn.remotes.base import KEYRING_WALK, KeyringCheck
from cairn.remotes.objects.blobs import Blobs
from cairn.remotes.objects.format import parse_json, whole_number
from cairn.remotes.objects.probe import WriteCheck

KEYRING_TTL = 10.0
"""Seconds a push trusts the keyring's revoked key ids it read (each push would read it again)."""
_KEYRING_DIGITS = 12  # the most digits a keyring version's name may have
_KEYRING_VERSION = re.compile(r"[0-9]{8,12}")  # _KEYRING_DIGITS at most


class Keyrings:
    """``keyring/<version>``: the opaque blob, the revoked key ids and the proof, signed for that
    number; a new version is written only if absent and only over the latest, which makes the
    keyring's compare-and-swap. Anyone who may write to the storage can write one too: devices
    use only versions the workspace's keys authenticate, and push checks revoked key ids
    against the newest such version only (``set_check``)."""

    def __init__(self, blobs: Blobs, writes: WriteCheck) -> None:
        self.blobs = blobs
        self.writes = writes
        self._check: KeyringCheck | None = None
        self._ring: tuple[float, KeyringBlob | None] | None = None  # (read at, keyring)

    def set_check(self, check: KeyringCheck) -> None:
        self._check = check
        self._ring = None

    def latest(self) -> KeyringBlob | None:
        numbers = self._numbers()
        return self._read(numbers[-1]) if numbers else None

    def versions(self, limit: int = KEYRING_WALK) -> list[KeyringBlob]:
        return [self._read(n) for n in self._numbers()[::-1][:limit]]

    def _numbers(self) -> list[int]:
        """The keyring versions stored, in order (names that are not numbers are not Cairn's)."""
        names = self.blobs.names("keyring/")
        return sorted(int(n) for n in names if _KEYRING_VERSION.fullmatch(n))

    def _read(self, number: int) -> KeyringBlob:
        """One keyring version; a damaged one comes back as a blob no device can open (so it is
        passed over, yet still counted: the next version is written after it)."""
        path = f"keyring/{number:08d}"
        try:
            raw = self.blobs.get(path)
        except FileNotFoundError:
            return KeyringBlob(b"", number)  # removed meanwhile: nothing in it to use
        try:
            data = parse_json(raw)
            revoked = tuple(sorted({whole_number(k, 2**32 - 1) for k in data["revoked_key_ids"]}))
            blob = base64.b64decode(data["blob"], validate=True)
            # The proof must name this object's own number: a version copied to a later name
            # (a replay) does not verify.
            proof = keyring_rules.proof_from({**data, "signed_version": number}, number)
        except (KeyError, TypeError, ValueError, binascii.Error, InvalidInput):
            return KeyringBlob(raw[: keyring_rules.MAX_KEYRING_BYTES], number)
        return KeyringBlob(blob, number, revoked, proof)

    def revoked(self) -> tuple[int, ...]:
        """The revoked key ids a push is checked against: those of the newest keyring version
        the workspace's keys authenticate, as read at most ``KEYRING_TTL`` seconds ago (a
        rotation made here is seen at once). Without the keys open, none."""
        now = time.monotonic()
        check = self._check
        if check is None:
            return ()
        if self._ring is None or now - self._ring[0] > KEYRING_TTL:
            trusted = next((v for v in self.versions() if check(v)), None)
            self._ring = (now, trusted)
        ring = self._ring[1]
        return ring.revoked if ring else ()

    def put(
        self, blob: bytes, expected: int | None, revoked: Sequence[int], proof: KeyringProof | None
    ) -> int:
        """Write the next version over ``expected`` (None: no keyring yet); RemoteConflict if it
        is not the latest any more (or another device wrote the next one first)."""
        numbers = self._numbers()
        if (numbers[-1] if numbers else None) != expected:
            raise RemoteConflict("the keyring changed on the remote since it was read; read again")
        version = (expected or 0) + 1
        if version >= 10**_KEYRING_DIGITS:
            raise SyncError(
                f"{self.blobs.url} holds keyring versions up to {version - 1}: no more fit"
            )
        self.writes.before_write()
        record: dict[str, Any] = {
            "blob": base64.b64encode(blob).decode("ascii"),
            "revoked_key_ids": sorted(set(revoked)),
        }
        if proof is not None:
            fields = keyring_rules.proof_fields(proof)
            record.update(signature=fields["signature"], verify_key=fields["verify_key"])
        try:
            self.blobs.put(f"keyring/{version:08d}", json.dumps(record).encode(), create=True)
        except AlreadyExistsError as exc:
            raise RemoteConflict("another device changed the keyring at the same time") from exc
        self._ring = None
        return version
