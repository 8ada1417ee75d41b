"""Fuzzing the wire: a mutation's JSON (a push body on the server, a pull page on the client).

``from_json`` returns a mutation or raises InvalidInput; ``problem`` then admits only ids, clocks
and scopes that match their patterns in full, in ASCII (no trailing newline, no Arabic-Indic
digits), so what a remote stores is safe to write into a page by hand. ``page_from_json`` reads a
page back or raises InvalidInput, and what is admitted round-trips.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cairn.errors import InvalidInput
from cairn.protocol import (
    MAX_SEQ,
    PullPage,
    WireMutation,
    from_json,
    page_body,
    page_from_json,
    problem,
)

from .conftest import envelope
from .fuzzing import ci, hostile_values, mutated, mutated_json, parse_or_refuse, soak

# The patterns as the protocol documents them, written out independently of protocol.py.
ID = re.compile(r"[0-9A-Za-z_.:|-]{1,160}", re.ASCII)
HLC = re.compile(r"[0-9]{13}-[0-9a-f]{4}-[0-9A-Za-z_-]{1,64}", re.ASCII)
SCOPE = re.compile(r"[0-9a-f]{8,64}", re.ASCII)

GOOD = WireMutation(
    "01a2039b-fd3c-7fed-ae31-34aab9db734a",
    "05bf889a470f671d",
    "1795356884284-0001-05bf889a470f671d",
    "rel-0123456789abcdef0123456789abcdef",
    "0123456789abcdef0123456789abcdef",
    envelope(b"sealed"),
    7,
)
DOC = GOOD.to_json()
PAGE = json.loads(page_body([GOOD, GOOD.with_seq(8)], "8", True))


def _doc(**changes: Any) -> dict[str, Any]:
    return {**DOC, **changes}


def _load(text: str) -> Any:
    """JSON as the server's framework and the client's httpx hand it over (deep nesting is
    refused before a parser ever sees it; see the remotes' tests)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


ids = st.from_regex(ID, fullmatch=True)
mutations = st.builds(
    WireMutation,
    ids,
    ids,
    st.from_regex(HLC, fullmatch=True),
    ids,
    st.none() | st.from_regex(SCOPE, fullmatch=True),
    st.binary(max_size=64).map(envelope),
    st.integers(0, MAX_SEQ),
)
documents = st.one_of(
    mutated_json(DOC).map(_load),
    st.dictionaries(st.sampled_from(sorted(DOC)), hostile_values, max_size=4),
    hostile_values,
)


def _check_mutation(data: Any) -> None:
    mutation = parse_or_refuse(from_json, data, refuse=InvalidInput)
    if mutation is None:
        return
    assert mutation.seq is None or 0 <= mutation.seq <= MAX_SEQ
    if problem(mutation, sealed=False) is None:
        for text in (mutation.mutation_id, mutation.device_id, mutation.entity_id):
            assert ID.fullmatch(text)
        assert HLC.fullmatch(mutation.hlc)
        assert mutation.scope is None or SCOPE.fullmatch(mutation.scope)
        assert from_json(json.loads(json.dumps(mutation.to_json()))) == mutation


@ci(200)
@given(data=documents)
@example(data=_doc(mutation_id="m-1\n"))  # `re.match(r"^...$")` admits a trailing newline
@example(data=_doc(device_id="dev\n"))
@example(data=_doc(hlc="\u0661" * 13 + "-0001-dev"))  # `\d` admits Arabic-Indic digits
@example(data=_doc(scope="0123456789abcdef\n"))
@example(data=_doc(seq=2**64))  # past every database's integers
@example(data=_doc(seq=-1))
@example(data=_doc(payload="\u00e9"))  # not ASCII: not base64 either
def test_a_wire_mutation_is_read_or_refused_and_admits_only_full_matches(data: Any) -> None:
    _check_mutation(data)


def _check_page(body: Any) -> None:
    page = parse_or_refuse(page_from_json, body, refuse=InvalidInput)
    if page is None:
        return
    assert isinstance(page.cursor, str) and isinstance(page.has_more, bool)
    for mutation in page.mutations:
        assert problem(mutation, sealed=False) is None
    again = json.loads(page_body(page.mutations, page.cursor, page.has_more))
    assert page_from_json(again) == page


@ci(200)
@given(
    text=st.one_of(
        mutated_json(PAGE),
        mutated(json.dumps(PAGE).encode()).map(lambda b: b.decode("utf-8", "replace")),
    )
)
@example(text=json.dumps({**PAGE, "has_more": "false"}))  # bool("false") is True
@example(text=json.dumps({**PAGE, "next": ["8"]}))  # str() made a cursor of a list
@example(text=json.dumps({**PAGE, "mutations": [_doc(mutation_id="m\n")]}))
def test_a_pull_page_is_read_or_refused(text: str) -> None:
    _check_page(_load(text))


@ci(50)
@given(page=st.builds(PullPage, st.lists(mutations, max_size=4), st.text(), st.booleans()))
def test_any_page_a_remote_writes_reads_back_the_same(page: PullPage) -> None:
    body = json.loads(page_body(page.mutations, page.cursor, page.has_more))
    assert page_from_json(body) == PullPage(list(page.mutations), page.cursor, page.has_more)
    for mutation in page.mutations:
        assert problem(mutation, sealed=True) is None


@pytest.mark.slow
@pytest.mark.timeout(1800)
@soak(10_000)
@given(data=documents, text=mutated_json(PAGE))
def test_the_wire_soak(data: Any, text: str) -> None:
    _check_mutation(data)
    _check_page(_load(text))
