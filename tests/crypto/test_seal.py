"""Sealed payloads: they open only whole, under their key, in their own slot."""

from __future__ import annotations

import os

import pytest

from cairn.crypto.seal import HEADER, MAX_PER_KEY, Opener, Sealer, open_sealed, seal
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


def test_one_sealer_counts_its_nonces_and_never_reuses_one() -> None:
    sealer, other = Sealer(KEY, 7), Sealer(KEY, 7)
    sealed = [sealer.seal(TEXT, b"slot-%d" % i) for i in range(100)]
    headers = [HEADER.unpack_from(s) for s in sealed]
    assert len({salt for _v, _k, salt, _n in headers}) == 1  # one derived key
    assert [int.from_bytes(n, "big") for *_rest, n in headers] == list(range(100))
    assert HEADER.unpack_from(other.seal(TEXT, b""))[2] != headers[0][2]  # its own derived key
    opener = Opener(keys)
    assert all(opener.open(s, b"slot-%d" % i) == TEXT for i, s in enumerate(sealed))
    with pytest.raises(PayloadTampered):  # the cached derived key still checks the slot
        opener.open(sealed[1], b"slot-0")


def test_a_sealer_draws_a_new_key_before_its_counter_runs_out() -> None:
    sealer = Sealer(KEY, 7)
    before = HEADER.unpack_from(sealer.seal(TEXT, b""))
    sealer._count = MAX_PER_KEY  # as if it had sealed 2**32 payloads
    after = sealer.seal(TEXT, b"x")
    salt, nonce = HEADER.unpack_from(after)[2:]
    assert salt != before[2] and nonce == bytes(12)
    assert open_sealed(keys, after, b"x") == TEXT
