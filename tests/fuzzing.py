"""Fuzzing Cairn's parsers: hostile values, and valid encodings with bytes or fields mutated.

Every parser that reads bytes from a remote, a file or a request is fed these and must either
return a valid value or raise a ``CairnError`` (the class its caller handles): never another
exception, never a hang, never an allocation without bound. Each ``*_fuzz.py`` test runs a bounded,
seeded slice by default (the ``ci`` profile derandomizes) and many more examples under
``@pytest.mark.slow`` (``make test-slow``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from cairn.errors import CairnError

T = TypeVar("T")

DEEP = 50_000
"""Nesting far past the interpreter's recursion limit, in a document of only 100 kB."""

HOSTILE_TEXTS = [
    "",
    " ",
    "m-1\n",  # a trailing newline: `re.match(r"...$")` lets it through
    "\nm-1",
    "m 1",
    "\u0661\u0662\u0663",  # Arabic-Indic digits: `\d` and int() accept them
    "\uff11\uff12",  # fullwidth digits
    "\u00b2\u00b2",  # superscript digits: str.isdigit() says yes, int() says no
    "\ud800",  # a lone surrogate: JSON can carry it, UTF-8 cannot
    "caf\u00e9",
    "\u0000",
    "x" * 200,  # longer than any id
    "../../etc/passwd",
    "1795356884284-0001-dev\n",
]
"""Strings that break parsers which match loosely or assume ASCII."""

HOSTILE_FRAGMENTS = [
    "null",
    "true",
    "false",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",  # parses to infinity
    "-0",
    "0.5",
    "-1",
    str(2**31),
    str(2**32),
    str(2**63),
    str(2**64),
    str(-(2**63) - 1),
    "1" * 5_000,  # past int()'s 4300-digit limit
    "[]",
    "{}",
    '""',
    "[" * DEEP + "]" * DEEP,
    '{"a":' * DEEP + "1" + "}" * DEEP,
    *(json.dumps(text) for text in HOSTILE_TEXTS),
]
"""JSON texts of values of the wrong type, out of range, deep, or not what they claim to be."""

_plain_json: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(HOSTILE_TEXTS),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=6,
)

fragments: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(HOSTILE_FRAGMENTS),
    _plain_json.map(json.dumps),
)
"""JSON text of one hostile value."""

hostile_values: st.SearchStrategy[Any] = _plain_json
"""A hostile value already parsed (for parsers that take JSON objects, not text)."""


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` with one to four changes: bytes flipped, cut short, extended, spliced."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["flip", "truncate", "extend", "insert", "delete", "repeat"]))
        at = draw(st.integers(0, len(data)))
        if how == "flip" and data:
            at = min(at, len(data) - 1)
            data[at] ^= draw(st.integers(1, 255))
        elif how == "truncate":
            del data[at:]
        elif how == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif how == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif how == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


def _paths(value: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path to every node of a JSON document (dict keys and list indexes), root first."""
    found = [here]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*here, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*here, index))
    return found


@st.composite
def mutated_json(draw: st.DrawFn, doc: Any) -> str:
    """``doc`` as JSON text with one to three of its nodes (at any depth, or the whole) replaced
    by a hostile value, removed, or joined by an unknown key: structure-aware mutation."""
    doc = json.loads(json.dumps(doc))  # a private copy
    replaced: dict[str, str] = {}
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        how = draw(st.sampled_from(["replace", "replace", "remove", "add"]))
        marker = f"\x00fuzz{len(replaced)}\x00"
        if not path:
            replaced[marker] = draw(fragments)
            doc = marker
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if how == "replace":
            replaced[marker] = draw(fragments)
            parent[path[-1]] = marker
        elif how == "remove":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            replaced[marker] = draw(fragments)
            parent[draw(st.text(max_size=8))] = marker
    text = json.dumps(doc)
    for marker, fragment in replaced.items():
        text = text.replace(json.dumps(marker), fragment)
    return text


@st.composite
def mutated_tree(draw: st.DrawFn, doc: Any, values: st.SearchStrategy[Any]) -> Any:
    """A copy of ``doc`` (lists and dicts, as a binary format parses) with one to three of its
    nodes (at any depth, or the whole) replaced by one of ``values``, removed, or joined by an
    unknown key: the structure-aware mutation ``mutated_json`` does, for formats that are not
    text (MessagePack: bytes and integers past JSON's are values too)."""

    def copy(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: copy(v) for k, v in value.items()}
        return [copy(v) for v in value] if isinstance(value, list) else value

    doc = copy(doc)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        how = draw(st.sampled_from(["replace", "replace", "remove", "add"]))
        if not path:
            doc = draw(values)
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if how == "replace":
            parent[path[-1]] = draw(values)
        elif how == "remove":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(values)
        else:
            parent.append(draw(values))
    return doc


def parse_or_refuse(
    parse: Callable[..., T], *args: Any, refuse: type[Exception] = CairnError
) -> T | None:
    """What ``parse`` returned, or None when it refused with ``refuse`` (the class its caller
    handles); any other exception fails the test."""
    try:
        return parse(*args)
    except refuse:
        return None


def ci(examples: int) -> settings:
    """The bounded slice every CI run takes (seeded by the ``ci`` profile)."""
    return settings(
        max_examples=examples,
        deadline=None,  # a hang fails through pytest-timeout, never through a timing assert
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


def soak(examples: int) -> settings:
    """The long run (``make test-slow``)."""
    return ci(examples)
