"""Fuzzing sealed envelopes and sealed frames: what a remote hands back may be anything.

An envelope or frame that is not exactly what was sealed (a byte flipped, cut short, extended,
another key id, another slot) must be refused with a CryptoError, which the sync engine sets
aside; what was sealed opens to the same bytes.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cairn.crypto.frames import Frames
from cairn.crypto.seal import HEADER, VERSION, Opener, Sealer
from cairn.errors import CryptoError
from cairn.protocol import sealed_key_id

from ..fuzzing import ci, mutated, parse_or_refuse, soak

KEY = bytes(range(32))
KEYS = {7: KEY}
AAD = b"ring|entity|mutation"
SEALED = Sealer(KEY, 7).seal(b"the cache TTL is five minutes", AAD)
FRAMES = Frames(bytes(range(32, 64)))
FRAMED = FRAMES.seal("log/dev-a/000000000001", b"a batch's bytes" * 10)

envelopes = st.one_of(mutated(SEALED), st.binary(max_size=200), st.just(SEALED))
frames = st.one_of(mutated(FRAMED), st.binary(max_size=200), st.just(FRAMED))


def _check_open(envelope: bytes) -> None:
    opened = parse_or_refuse(Opener(KEYS.get).open, envelope, AAD, refuse=CryptoError)
    if opened is not None:
        assert envelope == SEALED and opened == b"the cache TTL is five minutes"
    key_id = sealed_key_id(envelope)
    assert key_id is None or 0 <= key_id < 2**32


def _check_frame(framed: bytes, name: str) -> None:
    opened = parse_or_refuse(FRAMES.open, name, framed, refuse=CryptoError)
    if opened is not None:
        assert (framed, name) == (FRAMED, "log/dev-a/000000000001")


@ci(300)
@given(envelope=envelopes)
@example(envelope=SEALED[: HEADER.size + 15])  # one byte short of the smallest envelope
@example(envelope=bytes([VERSION]) + (8).to_bytes(4, "big") + SEALED[5:])  # a key id not held
def test_an_envelope_opens_only_as_sealed(envelope: bytes) -> None:
    _check_open(envelope)


@ci(200)
@given(framed=frames, name=st.sampled_from(["log/dev-a/000000000001", "log/dev-a/000000000002"]))
def test_a_frame_opens_only_as_sealed_under_its_name(framed: bytes, name: str) -> None:
    _check_frame(framed, name)


@ci(100)
@given(plaintext=st.binary(max_size=2048), aad=st.binary(max_size=200))
def test_whatever_is_sealed_opens_to_the_same_bytes(plaintext: bytes, aad: bytes) -> None:
    key = os.urandom(32)
    assert Opener({1: key}.get).open(Sealer(key, 1).seal(plaintext, aad), aad) == plaintext
    frames = Frames(key)
    name = "snapshots/000000000001"
    assert frames.open(name, frames.seal(name, plaintext)) == plaintext


@pytest.mark.slow
@pytest.mark.timeout(1800)
@soak(10_000)
@given(envelope=envelopes, framed=frames, name=st.text(max_size=30))
def test_envelopes_and_frames_soak(envelope: bytes, framed: bytes, name: str) -> None:
    _check_open(envelope)
    _check_frame(framed, name)
