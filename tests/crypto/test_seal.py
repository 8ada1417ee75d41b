"""Sealed payloads: they open only whole, under their key, in their own slot."""

from __future__ import annotations

import os

import pytest

from cairn.crypto.seal import HEADER, open_sealed, seal
from cairn.errors import KeyMismatch, PayloadTampered
from cairn.protocol import sealed_key_id

KEY = os.urandom(32)
TEXT = ("We deploy the API with blue-green releases on Kubernetes. " * 20).encode()


def keys(key_id: int) -> bytes | None:
    return KEY if key_id == 7 else None


def test_a_sealed_payload_opens_to_the_same_bytes_and_hides_them() -> None:
    sealed = seal(KEY, 7, TEXT, b"ws|entity|mutation")
    assert open_sealed(keys, sealed, b"ws|entity|mutation") == TEXT
    assert b"blue-green" not in sealed and sealed_key_id(sealed) == 7
    assert len(sealed) == len(TEXT) + HEADER.size + 16


def test_sealing_twice_never_repeats_bytes() -> None:
    first, second = seal(KEY, 7, TEXT, b"a"), seal(KEY, 7, TEXT, b"a")
    salt_and_nonce = slice(5, HEADER.size)
    assert first != second and first[salt_and_nonce] != second[salt_and_nonce]


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-1] + bytes([b[-1] ^ 1]),  # a flipped bit in the tag
        lambda b: b[:30] + bytes([b[30] ^ 0x80]) + b[31:],  # a flipped bit in the ciphertext
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: b[:5],  # truncated into the header
        lambda b: b[:1] + (8).to_bytes(4, "big") + b[5:],  # key id rewritten
    ],
)
def test_a_damaged_payload_is_refused(damage: object) -> None:
    sealed = seal(KEY, 7, TEXT, b"slot")
    broken = damage(sealed)  # type: ignore[operator]
    with pytest.raises((PayloadTampered, KeyMismatch)):
        open_sealed(lambda _id: KEY, broken, b"slot")


def test_a_payload_moved_to_another_slot_is_refused() -> None:
    sealed = seal(KEY, 7, TEXT, b"ws|memory-1|mutation-1")
    with pytest.raises(PayloadTampered, match="moved to another"):
        open_sealed(keys, sealed, b"ws|memory-2|mutation-9")


def test_an_unknown_key_id_says_what_to_do() -> None:
    sealed = seal(KEY, 9, TEXT, b"")
    with pytest.raises(KeyMismatch, match="cairn sync setup"):
        open_sealed(keys, sealed, b"")
