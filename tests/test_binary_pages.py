"""The binary page format: what it writes reads back, what it refuses, and how it is asked for.

Its decoders take bytes from the network: a push body on the server, a pull page on the client.
Each returns mutations that passed the same checks as JSON, or raises InvalidInput; nothing else
(no other exception, no extension object, no oversized field) gets through. The fuzz is bounded
and seeded (the ``ci`` profile); ``make test-slow`` soaks it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import msgpack
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cairn.binary_pages import (
    MAX_STRING,
    MEDIA_TYPE,
    accepts,
    is_binary,
    pack_page,
    pack_push,
    packed_size,
    unpack_page,
    unpack_push,
)
from cairn.errors import InvalidInput
from cairn.protocol import (
    MAX_BATCH,
    MAX_PAYLOAD_BYTES,
    PullPage,
    WireMutation,
    json_size,
    problem,
)

from .conftest import envelope
from .fuzzing import ci, mutated, parse_or_refuse, soak
from .test_protocol_fuzz import GOOD, HLC, ID, SCOPE, mutations

PAGE = pack_page([GOOD, GOOD.with_seq(8)], "8", True)
PUSH = pack_push([GOOD, GOOD])
END = {"next": "8", "has_more": False}
ARABIC_DIGITS = "\u0661" * 13 + "-0001-d"  # `\d` admits them; the pattern does not
ROW = [1, GOOD.mutation_id, GOOD.device_id, GOOD.hlc, GOOD.entity_id, GOOD.scope, GOOD.payload]


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _row(**changes: Any) -> list[Any]:
    names = ["v", "mutation_id", "device_id", "hlc", "entity_id", "scope", "payload"]
    return [changes.get(name, value) for name, value in zip(names, ROW, strict=True)]


def test_a_page_reads_back_the_same() -> None:
    page = unpack_page(PAGE)
    assert page == PullPage([GOOD, GOOD.with_seq(8)], "8", True)


def test_a_push_body_reads_back_without_seqs() -> None:
    assert unpack_push(PUSH) == [GOOD.with_seq(None), GOOD.with_seq(None)]  # type: ignore[arg-type]


def test_payloads_travel_as_raw_bytes_not_base64() -> None:
    payload = envelope(bytes(range(256)) * 8)
    body = pack_push([WireMutation("m", "d", GOOD.hlc, "e", None, payload)])
    assert payload in body  # as is, not re-encoded
    assert len(body) < len(payload) + 100


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"", "not valid"),
        (b"\xc1", "not valid"),  # never used by MessagePack
        (PUSH[:-3], "not valid"),  # cut short
        (PUSH + b"\x00", "not valid"),  # trailing bytes
        (_pack([ROW]), "map"),
        (_pack({"mutations": [ROW], "extra": 1}), "map"),
        (_pack({"mutations": {}}), "array"),
        (_pack({"mutations": [ROW[:6]]}), "array of 7 fields"),
        (_pack({"mutations": [[*ROW, 8]]}), "array of 7 fields"),
        (_pack({"mutations": [_row(v=True)]}), "version"),
        (_pack({"mutations": [_row(v=1.0)]}), "version"),
        (_pack({"mutations": [_row(hlc=7)]}), "strings"),
        (_pack({"mutations": [_row(mutation_id=b"m-1")]}), "strings"),  # bin, not str
        (_pack({"mutations": [_row(scope=b"0123abcd")]}), "scope"),
        (_pack({"mutations": [_row(payload="c2VhbGVk")]}), "payload must be a bin"),  # base64
        (_pack({"mutations": [_row(payload=msgpack.ExtType(5, b"x"))]}), "max_ext_len"),
        (_pack({"mutations": [_row(payload=msgpack.ExtType(5, b""))]}), "extension type 5"),
        (_pack({"mutations": [_row(payload=msgpack.Timestamp(0))]}), "not valid"),
        (_pack({"mutations": [_row(mutation_id="m" * (MAX_STRING + 1))]}), "not valid"),
        (_pack({"mutations": [_row(payload=b"x" * (MAX_PAYLOAD_BYTES + 1))]}), "not valid"),
        (_pack({"mutations": [None] * (MAX_BATCH + 1)}), "not valid"),
        (_pack({1: 2}), "not valid"),  # map keys are strings
        (b"\x91" * 100_000, "not valid"),  # arrays nested past the unpacker's stack
        (b"\x81\xa1k" * 50_000 + b"\xc0", "not valid"),  # maps nested likewise
        (b"\xdd\xff\xff\xff\xff", "not valid"),  # claims 4 billion items, holds none
        (b"\xc6\x7f\xff\xff\xff", "not valid"),  # claims a 2 GiB bin
    ],
)
def test_hostile_push_bodies_are_invalid_input(body: bytes, says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        unpack_push(body)


@pytest.mark.parametrize(
    "body",
    [
        _pack({"mutations": [_row()], **END}),  # no seq
        _pack({"mutations": [[*ROW, -1]], **END}),
        _pack({"mutations": [[*ROW, 2**64 - 1]], **END}),
        _pack({"mutations": [[*ROW, True]], **END}),
        _pack({"mutations": [], "next": 8, "has_more": False}),
        _pack({"mutations": [], "next": "8", "has_more": 0}),
        _pack({"mutations": [], "next": "8"}),
        _pack({"mutations": [[*_row(mutation_id="m\n"), 8]], **END}),
        _pack({"mutations": [[*_row(hlc=ARABIC_DIGITS), 8]], **END}),
    ],
)
def test_pages_a_remote_would_never_write_are_refused(body: bytes) -> None:
    with pytest.raises(InvalidInput):
        unpack_page(body)


@pytest.mark.parametrize(
    ("header", "binary"),
    [
        (MEDIA_TYPE, True),
        (f"{MEDIA_TYPE}, application/json;q=0.5", True),
        (f"application/json, {MEDIA_TYPE.upper()};q=0.1", True),
        (f"{MEDIA_TYPE};q=0", False),
        (f"{MEDIA_TYPE};q=nonsense", False),
        ("application/json", False),
        ("*/*", False),  # what httpx and curl send: JSON, as before
        ("application/*", False),
        ("", False),
        (None, False),
    ],
)
def test_only_a_client_that_names_the_format_gets_it(header: str | None, binary: bool) -> None:
    assert accepts(header) is binary


def test_the_content_type_may_carry_parameters() -> None:
    assert is_binary(f"{MEDIA_TYPE}; charset=binary") and not is_binary("application/json")
    assert not is_binary(None)


def _check_push(body: bytes) -> None:
    found = parse_or_refuse(unpack_push, body, refuse=InvalidInput)
    if found is None:
        return
    for mutation in found:
        assert mutation.seq is None
        assert isinstance(mutation.payload, bytes) and len(mutation.payload) <= MAX_PAYLOAD_BYTES
        if problem(mutation, sealed=False) is None:
            for text in (mutation.mutation_id, mutation.device_id, mutation.entity_id):
                assert ID.fullmatch(text)
            assert HLC.fullmatch(mutation.hlc)
            assert mutation.scope is None or SCOPE.fullmatch(mutation.scope)
    assert unpack_push(pack_push(found)) == found


def _check_page(body: bytes) -> None:
    page = parse_or_refuse(unpack_page, body, refuse=InvalidInput)
    if page is None:
        return
    assert isinstance(page.cursor, str) and isinstance(page.has_more, bool)
    for mutation in page.mutations:
        assert problem(mutation, sealed=False) is None and mutation.seq is not None
    assert unpack_page(pack_page(page.mutations, page.cursor, page.has_more)) == page


hostile_objects = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=9) | st.dictionaries(st.text(max_size=9), inner),
    max_leaves=20,
).map(_pack)
"""MessagePack of any shape, well formed."""


@ci(200)
@given(body=st.one_of(mutated(PUSH), hostile_objects, st.binary(max_size=64)))
@example(body=_pack({"mutations": [_row(mutation_id="m-1\n")]}))
@example(body=_pack({"mutations": [_row(scope="0123456789abcdef\n")]}))
def test_a_binary_push_body_is_read_or_refused(body: bytes) -> None:
    _check_push(body)


@ci(200)
@given(body=st.one_of(mutated(PAGE), hostile_objects))
def test_a_binary_page_is_read_or_refused(body: bytes) -> None:
    _check_page(body)


@ci(50)
@given(page=st.builds(PullPage, st.lists(mutations, max_size=4), st.text(), st.booleans()))
def test_any_page_a_remote_writes_reads_back_the_same_in_binary(page: PullPage) -> None:
    assert unpack_page(pack_page(page.mutations, page.cursor, page.has_more)) == PullPage(
        list(page.mutations), page.cursor, page.has_more
    )


@pytest.mark.slow
@pytest.mark.timeout(1800)
@soak(10_000)
@given(push=mutated(PUSH), page=mutated(PAGE))
def test_the_binary_wire_soak(push: bytes, page: bytes) -> None:
    _check_push(push)
    _check_page(page)


sizes = st.sampled_from([0, 1, 31, 32, 255, 256, 65_535, 65_536])


@ci(100)
@given(
    mutation=mutations,
    payload=sizes.map(lambda n: b"\x01" * n),
    version=st.sampled_from([0, 1, 127, 128, 2**40]),
    long_id=sizes.map(lambda n: "i" * n),
)
def test_a_push_is_measured_in_the_bytes_each_form_writes(
    mutation: WireMutation, payload: bytes, version: int, long_id: str
) -> None:
    """What push batches are measured in, without writing them: exact in both forms."""
    mutation = replace(mutation, seq=None)  # a push's mutations have none yet
    for m in (mutation, replace(mutation, payload=payload, version=version, device_id=long_id)):
        assert packed_size(m) == len(pack_push([m])) - len(pack_push([]))
        compact = json.dumps(m.to_json(), separators=(",", ":"))
        assert json_size(m) == len(compact.encode())
