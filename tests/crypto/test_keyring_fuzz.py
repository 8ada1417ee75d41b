"""Fuzzing the keyring blob a remote stores, and the recovery key a person types.

A keyring that is not one Cairn wrote is refused with a CryptoError; one that is accepted holds
key derivation parameters a device can afford (a remote cannot make it derive a key for hours or
allocate terabytes), reads back the same after writing, and opens or is refused cleanly.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cairn.crypto import keyring as kr
from cairn.errors import CryptoError, WrongPassphrase

from ..fuzzing import ci, mutated, mutated_json, parse_or_refuse, soak

FAST = kr.KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)  # tests only
_RING, _UNLOCKED, RECOVERY = kr.create("correct horse battery", FAST)
RING, UNLOCKED = kr.rotate(_RING, _UNLOCKED)  # two data keys
BLOB = RING.to_bytes()
DOC = json.loads(BLOB)


def _with(**changes: object) -> bytes:
    return json.dumps({**DOC, **changes}).encode()


def _kdf(**changes: object) -> bytes:
    return _with(kdf={**DOC["kdf"], **changes})


blobs = st.one_of(
    mutated_json(DOC).map(str.encode),
    mutated(BLOB),
    st.binary(max_size=300),
)


def _check_blob(blob: bytes) -> None:
    ring = parse_or_refuse(kr.Keyring.from_bytes, blob, refuse=CryptoError)
    if ring is None:
        return
    kdf = ring.kdf
    assert 1 <= kdf.lanes <= kr.MAX_LANES and 1 <= kdf.iterations <= kr.MAX_ITERATIONS
    assert 8 * kdf.lanes <= kdf.memory_kib <= kr.MAX_MEMORY_KIB
    assert 8 <= len(kdf.salt) <= 64
    assert all(0 < key_id < 2**32 for key_id in ring.data_keys)
    assert kr.Keyring.from_bytes(ring.to_bytes()) == ring
    # Opening it (HKDF only: the recovery key) ends in keys or a CairnError, never a crash.
    unlocked = parse_or_refuse(kr.unlock, ring, None, RECOVERY)
    if unlocked is not None:  # only the workspace's own keys open (each wrap names its slot)
        assert unlocked.data_keys.items() <= UNLOCKED.data_keys.items()
    parse_or_refuse(kr.open_data_keys, ring, UNLOCKED.master)


@ci(300)
@given(blob=blobs)
@example(blob=_kdf(memory_kib=float("inf")))  # OverflowError from int()
@example(blob=_kdf(memory_kib=2**40))  # a remote asks for a 1 PiB key derivation
@example(blob=_kdf(iterations=10**9))  # ... or one that runs for days
@example(blob=_kdf(lanes=0))  # Argon2id's own ValueError at unlock
@example(blob=_kdf(salt=""))  # too short a salt for Argon2id
@example(blob=_with(keyring_id="\ud800"))  # UnicodeEncodeError when a wrap is opened
@example(blob=_with(keyring_id=["a"]))  # not a string: str() made one of it
@example(blob=_with(current=2.5))  # int() truncated it
@example(blob=_with(data_keys={**DOC["data_keys"], "\u0663": DOC["data_keys"]["1"]}))
@example(blob=_with(data_keys={"01": DOC["data_keys"]["1"], "2": DOC["data_keys"]["2"]}))
@example(blob=b"[" * 50_000 + b"]" * 50_000)  # RecursionError from json.loads
def test_a_keyring_blob_is_read_or_refused(blob: bytes) -> None:
    _check_blob(blob)


def test_the_keyring_cairn_writes_reads_back_and_opens() -> None:
    assert kr.Keyring.from_bytes(BLOB) == RING
    assert kr.unlock(kr.Keyring.from_bytes(BLOB), recovery=RECOVERY) == UNLOCKED


recovery_texts = st.one_of(
    st.text(max_size=80),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ234567- ", max_size=80),
    st.sampled_from([RECOVERY[:-1], RECOVERY + "A", RECOVERY.replace("-", "\u00e9")]),
)


def _check_recovery(text: str) -> None:
    key = parse_or_refuse(kr.parse_recovery, text, refuse=WrongPassphrase)
    if key is not None:
        assert len(key) == kr.KEY_BYTES
        assert kr.parse_recovery(kr.format_recovery(key)) == key


@ci(300)
@given(text=recovery_texts)
@example(text="\u00e9" * 60)  # non-ASCII letters: ValueError from base64
def test_a_typed_recovery_key_is_read_or_refused(text: str) -> None:
    _check_recovery(text)


@ci(50)
@given(
    key=st.binary(min_size=32, max_size=32),
    noise=st.lists(st.sampled_from([" ", "-", "  ", "\t"]), max_size=6),
    lower=st.booleans(),
)
def test_a_recovery_key_reads_back_however_it_is_typed(
    key: bytes, noise: list[str], lower: bool
) -> None:
    text = kr.format_recovery(key)
    for index, gap in enumerate(noise):
        at = (index * 7) % len(text)
        text = text[:at] + gap + text[at:]
    assert kr.parse_recovery(text.lower() if lower else text) == key


@ci(30)
@given(
    memory_kib=st.integers(8, kr.MAX_MEMORY_KIB),
    iterations=st.integers(1, kr.MAX_ITERATIONS),
    lanes=st.integers(1, 4),
    keys=st.dictionaries(
        st.integers(1, 2**32 - 1), st.binary(min_size=28, max_size=60), min_size=1
    ),
)
def test_any_keyring_reads_back_as_written(
    memory_kib: int, iterations: int, lanes: int, keys: dict[int, bytes]
) -> None:
    ring = kr.Keyring(
        "abcdefghijklmnop",
        kr.KdfParams(max(memory_kib, 8 * lanes), iterations, lanes, os.urandom(16)),
        os.urandom(60),
        os.urandom(60),
        keys,
        min(keys),
    )
    assert kr.Keyring.from_bytes(ring.to_bytes()) == ring


@pytest.mark.slow
@pytest.mark.timeout(1800)
@soak(10_000)
@given(blob=blobs, text=recovery_texts)
def test_keyrings_and_recovery_keys_soak(blob: bytes, text: str) -> None:
    _check_blob(blob)
    _check_recovery(text)


def test_a_keyring_past_the_bounds_is_refused_naming_the_field() -> None:
    with pytest.raises(CryptoError, match="iterations is not an integer from 1 to 16"):
        kr.Keyring.from_bytes(_kdf(iterations=10**9))
