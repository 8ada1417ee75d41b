"""Sealed frames: how object storage hides what it holds.

A bucket or a shared folder keeps whole objects (batches of envelopes, device records,
snapshots), not just payloads. Their framing (which mutation ids, HLCs, entity ids and scope
tags a batch holds) is sealed too, with AES-256-GCM under the workspace's frame key and bound to
the object's name, so an object moved to another name (or another workspace) fails to open.

The frame key is derived from the workspace's first data key (``Unlocked.frame_key``), so it is
fixed for the workspace's life: rotation adds data keys and does not change it. Nonces are random:
one key seals one object per batch a device writes, far below the 2^32 messages under which
random 96-bit nonces stay safe.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cairn.errors import PayloadTampered

_NONCE = 12


class Frames:
    """Seals and opens the objects of one workspace, each bound to its name."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a frame key is 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, name: str, data: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, data, name.encode())

    def open(self, name: str, sealed: bytes) -> bytes:
        """The object's bytes; PayloadTampered when it was altered, cut short, moved, or sealed
        by another workspace."""
        if len(sealed) < _NONCE + 16:
            raise PayloadTampered(f"{name} is too short to be a sealed object")
        try:
            return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], name.encode())
        except InvalidTag as exc:
            raise PayloadTampered(
                f"{name} does not open with this workspace's key (damaged, moved, or not ours)"
            ) from exc
