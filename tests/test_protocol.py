"""The sync envelope: what a remote accepts, and the page encoding the server writes by hand."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cairn.errors import InvalidInput, MutationRejected
from cairn.protocol import (
    WireMutation,
    check_batch,
    from_json,
    many_from_json,
    page_body,
    sealed_key_id,
)

from .conftest import envelope

GOOD = WireMutation(
    "01a2039b-fd3c-7fed-ae31-34aab9db734a",
    "05bf889a470f671d",
    "1795356884284-0001-05bf889a470f671d",
    "rel-0123456789abcdef0123456789abcdef",
    "0123456789abcdef0123456789abcdef",
    envelope(bytes(range(256)) * 3),
    7,
)


def test_a_page_written_by_hand_reads_back_as_the_same_mutations() -> None:
    untagged = WireMutation("m-2", "dev", "1795356884284-0002-dev", "e", None, envelope(), 8)
    body = json.loads(page_body([GOOD, untagged], "8", True))
    assert body["next"] == "8" and body["has_more"] is True
    assert many_from_json(body["mutations"]) == [GOOD, untagged]
    assert body["mutations"][1] == untagged.to_json()
    assert json.loads(page_body([], "0", False)) == {
        "mutations": [],
        "next": "0",
        "has_more": False,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"payload": "***"}, "base64"),
        ({"v": "1"}, "integer"),
        ({"hlc": 5}, "strings"),
        ({"seq": True}, "seq"),
        ({"seq": -1}, "seq"),
        ({"seq": 7.5}, "seq"),
        ({"seq": 2.0**63}, "seq"),
        ({"v": 1.5}, "integer"),
        ({"scope": 3}, "scope"),
    ],
)
def test_malformed_mutations_are_invalid_input(change: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        from_json({**GOOD.to_json(), **change})
    with pytest.raises(InvalidInput, match="mutation_id"):
        from_json({k: v for k, v in GOOD.to_json().items() if k != "mutation_id"})


def test_whole_numbers_written_with_a_fraction_are_integers_as_json_schema_says() -> None:
    """The push schema says integer, which JSON Schema takes to include 7.0 (schemathesis sent
    one and the protocol refused a request its document allowed)."""
    assert from_json({**GOOD.to_json(), "seq": 7.0, "v": 1.0}) == GOOD


def test_a_batch_with_bad_mutations_is_refused_whole_naming_each() -> None:
    old = WireMutation("m-1", "dev", GOOD.hlc, "e", None, b"x", version=2)
    bad_clock = WireMutation("m-2", "dev", "yesterday", "e", None, b"x")
    with pytest.raises(MutationRejected) as caught:
        check_batch([GOOD, old, bad_clock])
    assert caught.value.rejected["m-1"][0] == "unsupported_version"
    assert caught.value.rejected["m-2"][0] == "invalid_mutation"
    assert GOOD.mutation_id not in caught.value.rejected
    check_batch([GOOD])  # a good batch passes


def test_an_encrypted_workspace_takes_sealed_envelopes_only() -> None:
    plain = WireMutation("m-3", "dev", GOOD.hlc, "e", None, b'{"content": "hello"}')
    with pytest.raises(MutationRejected) as caught:
        check_batch([plain])
    assert caught.value.rejected["m-3"][0] == "unsealed_payload"
    assert sealed_key_id(envelope(key_id=4)) == 4 and sealed_key_id(b"\x01short") is None
    check_batch([plain], sealed=False)  # what a hosted (plaintext) workspace will accept


ARABIC_DIGITS = "\u0661\u0667\u0669\u0665\u0663\u0665\u0666\u0668\u0668\u0664\u0662\u0668\u0664"


@pytest.mark.parametrize(
    "change",
    [
        {"mutation_id": "m-1\n"},
        {"device_id": "dev\n"},
        {"entity_id": "e\n"},
        {"hlc": GOOD.hlc + "\n"},
        {"scope": "0123456789abcdef\n"},
        {"hlc": f"{ARABIC_DIGITS}-0001-dev"},  # 13 digits, but not ASCII ones
        {"mutation_id": "m\u00e9"},
    ],
)
def test_ids_clocks_and_scopes_must_match_whole_and_in_ascii(change: dict[str, str]) -> None:
    bad = replace(GOOD, **change)
    with pytest.raises(MutationRejected) as caught:
        check_batch([bad])
    assert caught.value.rejected[bad.mutation_id][0] == "invalid_mutation"


text_or_valid = st.one_of(st.text(max_size=20), st.from_regex(r"\A[0-9A-Za-z_.:|-]{1,20}\Z"))


@given(
    ids=st.tuples(text_or_valid, text_or_valid, text_or_valid, text_or_valid),
    scope=st.none() | st.text(max_size=20),
    seq=st.integers(min_value=0, max_value=2**63 - 1),
    cursor=st.text(max_size=10),
)
@settings(max_examples=200)
def test_a_page_is_valid_json_whatever_its_strings_hold(
    ids: tuple[str, str, str, str], scope: str | None, seq: int, cursor: str
) -> None:
    # The writer does not trust the checks that admitted the mutations: whatever reached the
    # storage (an older server's rows, a bug elsewhere) still makes a page every client reads.
    stored = WireMutation(ids[0], ids[1], ids[2], ids[3], scope, b"\x00\xffpayload", seq)
    body = json.loads(page_body([stored, GOOD], cursor, False))
    assert many_from_json(body["mutations"]) == [stored, GOOD]
    assert body["next"] == cursor
