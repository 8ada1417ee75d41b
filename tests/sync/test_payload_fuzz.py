"""Fuzzing the sync payload: a pulled payload may be anything another device (or a remote) sent.

``decode`` returns a state or raises PayloadError, the one error the sync engine sets a pulled
mutation aside for; any other exception would stop the whole pull. A state it accepts is one the
store can hold (its clocks parse, its times display, its text is UTF-8) and encodes back to the
same state (its vector at float16 precision); and a pull that meets an unreadable payload still
applies the rest of the page. Both formats are fed: format 2 (MessagePack, written today) and
format 1 (JSON, which logs keep), the latter from payloads the old encoder wrote.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cairn import model, replication, vector_bytes
from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.hlc import HLC
from cairn.ids import uuid7
from cairn.model import Memory
from cairn.protocol import HOSTED, WireMutation
from cairn.remotes.memory import MemoryRemote
from cairn.replication import MemoryState, RelationState, Revision
from cairn.store.db import Database
from cairn.sync.engine import Syncer
from cairn.sync.payload import (
    FORMAT,
    MAX_TEXT,
    MEMORY_FIELDS,
    PayloadError,
    decode,
    encode_memory,
    encode_relation,
    relation_entity_id,
)

from ..fuzzing import ci, hostile_values, mutated, mutated_json, mutated_tree, parse_or_refuse, soak

HEAD = struct.Struct(">BcI")
DIM = 384
OLD = [
    (p["entity_id"], bytes.fromhex(p["payload"]))
    for p in json.loads(
        (Path(__file__).resolve().parent.parent / "data" / "payloads_v1.json").read_text()
    )["payloads"]
    if "sealed" not in p
]
"""Format-1 payloads as the old encoder wrote them (entity id, payload)."""

clocks = st.builds(
    lambda wall, counter, device: HLC(wall, counter, device).pack(),
    st.integers(0, 10**13 - 1),
    st.integers(0, 0xFFFF),
    st.from_regex(r"[0-9a-f]{16}", fullmatch=True),
)
times = st.integers(model.MIN_MS, model.MAX_MS)
texts = st.text(max_size=40)

memory_states = st.builds(
    lambda memory, vector, created_hlc, field_hlc, ancestors, revisions: MemoryState(
        replace(
            memory,
            model_id=memory.model_id if vector else None,
            hlc=max([memory.hlc, created_hlc, *field_hlc.values()]),  # a memory's newest clock
        ),
        created_hlc,
        field_hlc,
        tuple(ancestors),
        vector,
        tuple(revisions),
    ),
    st.builds(
        Memory,
        id=st.uuids().map(str),
        content=st.text(min_size=1, max_size=1500),
        kind=st.from_regex(model.KIND_PATTERN, fullmatch=True),
        project=texts,
        tags=st.lists(texts, max_size=4, unique=True).map(lambda tags: tuple(sorted(tags))),
        topic_key=st.none() | texts,
        source=texts,
        created_at=times,
        updated_at=times,
        deleted=st.booleans(),
        content_hash=texts,
        model_id=texts,
        hlc=clocks,
    ),
    st.none() | st.binary(min_size=4, max_size=64).filter(lambda v: len(v) % 4 == 0),
    clocks,
    st.dictionaries(st.sampled_from(replication.CLOCKED_FIELDS), clocks),
    st.lists(clocks, max_size=3),
    st.lists(st.builds(Revision, clocks, texts, texts), max_size=2),
)
relation_states = st.builds(
    RelationState,
    st.uuids().map(str),
    st.uuids().map(str),
    st.sampled_from(model.RELATION_TYPES),
    times,
    st.booleans(),
    clocks,
)


def _entity_id(state: MemoryState | RelationState) -> str:
    return state.memory.id if isinstance(state, MemoryState) else relation_entity_id(state)


def _encode(state: MemoryState | RelationState) -> bytes:
    return encode_memory(state) if isinstance(state, MemoryState) else encode_relation(state)


def _wire(entity_id: str, payload: bytes, device: str = "0123456789abcdef") -> WireMutation:
    return WireMutation(uuid7(), device, f"1795000000000-0000-{device}", entity_id, None, payload)


MEMORY = Memory(
    id="01a20000-0000-7000-8000-000000000001",
    content="The billing service retries webhooks with exponential backoff. " * 20,
    kind="fact",
    project="billing",
    tags=("billing", "webhooks"),
    topic_key="retries",
    source="laptop",
    created_at=1_795_000_000_000,
    updated_at=1_795_000_000_500,
    deleted=False,
    content_hash="ab" * 32,
    model_id="minilm",
    hlc="1795000000500-0001-dev",
)
LONG = MemoryState(
    MEMORY,
    "1795000000000-0000-dev",
    {"content": "1795000000500-0001-dev"},
    ("1795000000000-0000-dev",),
    b"\x00\x00\x80\x3f" * 4,
    (Revision("1795000000400-0000-other", "older text", "cd" * 32),),
)
SHORT = replace(LONG, memory=replace(MEMORY, content="short"))
RELATION = RelationState(
    MEMORY.id, "01a20000-0000-7000-8000-000000000002", "supersedes", 1, False, MEMORY.hlc
)
VALID = [LONG, SHORT, RELATION]


def _fields(state: MemoryState | RelationState) -> list[Any]:
    """The MessagePack array inside a valid format-2 payload of ``state``."""
    fields: list[Any] = msgpack.unpackb(_encode(state)[1:], raw=False)
    return fields


def _json_body(payload: bytes) -> Any:
    """The JSON document inside a format-1 payload."""
    _version, kind, size = HEAD.unpack_from(payload)
    data = payload[HEAD.size : HEAD.size + size]
    return json.loads(zlib.decompress(data) if kind.isupper() else data)


def _v2(fields: Any) -> bytes:
    """A format-2 payload of ``fields`` (a lone surrogate becomes bytes that are not UTF-8)."""
    return bytes([FORMAT]) + msgpack.packb(
        fields, use_bin_type=True, unicode_errors="surrogatepass"
    )


def _packable(value: Any) -> bool:
    try:
        _v2(value)
    except (OverflowError, ValueError, TypeError):  # integers past 64 bits
        return False
    return True


msgpack_values = (
    hostile_values.filter(_packable)
    | st.binary(max_size=40)
    | st.integers(-(2**63), 2**64 - 1)
    | st.sampled_from([zlib.compress(b"\xff\xfe"), zlib.compress(b" " * (MAX_TEXT + 1), 9)])
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
)
"""Values of the wrong type, out of range, not UTF-8, inflating without end, or extensions."""


@st.composite
def payloads(draw: st.DrawFn) -> tuple[str, bytes]:
    """(entity id, payload): a valid payload of either format with bytes or fields mutated, or
    any bytes."""
    how = draw(st.sampled_from(["bytes", "fields", "fields", "old bytes", "old fields", "any"]))
    if how.startswith("old"):
        entity_id, payload = draw(st.sampled_from(OLD))
        if how == "old bytes":
            return entity_id, draw(mutated(payload))
        data = draw(mutated_json(_json_body(payload))).encode()
        kind = payload[1:2].lower()
        if draw(st.booleans()):
            data, kind = zlib.compress(data, 1), kind.upper()
        tail = draw(st.sampled_from([b"", b"\x00" * 16, b"\x00" * 7]))
        return entity_id, HEAD.pack(1, kind, len(data)) + data + tail
    state = draw(st.sampled_from(VALID))
    if how == "bytes":
        return _entity_id(state), draw(mutated(_encode(state)))
    if how == "any":
        return _entity_id(state), draw(st.binary(max_size=300))
    fields = draw(mutated_tree(_fields(state), msgpack_values))
    return _entity_id(state), _v2(fields)


def _packed(kind: bytes, body: dict[str, object], tail: bytes = b"") -> bytes:
    data = json.dumps(body).encode()
    return HEAD.pack(1, kind, len(data)) + data + tail


def _old(name: str) -> tuple[str, dict[str, Any]]:
    entity_id, payload = OLD[["short", "long_compressed", "tombstone", "relation"].index(name)]
    return entity_id, _json_body(payload)


def _memory_with(**changes: object) -> tuple[str, bytes]:
    entity_id, body = _old("short")
    return entity_id, _packed(b"m", {**body, **changes})


def _relation_with(**changes: object) -> tuple[str, bytes]:
    entity_id, body = _old("relation")
    return entity_id, _packed(b"r", {**body, **changes})


def _v2_memory_with(**changes: object) -> tuple[str, bytes]:
    fields = _fields(SHORT)
    for name, value in changes.items():
        fields[MEMORY_FIELDS.index(name) + 1] = value
    return SHORT.memory.id, _v2(fields)


def _as_sent(state: MemoryState | RelationState) -> MemoryState | RelationState:
    """``state`` as another device reads it back: its vector at float16 precision."""
    if isinstance(state, RelationState) or state.vector is None:
        return state
    return replace(state, vector=vector_bytes.stored(np.frombuffer(state.vector, "<f4")))


def _check_decode(entity_id: str, payload: bytes) -> None:
    state = parse_or_refuse(decode, _wire(entity_id, payload), refuse=PayloadError)
    if state is None:
        return
    clocks = [state.hlc]
    if isinstance(state, MemoryState):
        memory = state.memory
        clocks += [memory.hlc, state.created_hlc, *state.field_hlc.values(), *state.ancestors]
        clocks += [r.hlc for r in state.revisions]
        model.iso(memory.created_at), model.iso(memory.updated_at)  # displayable
        assert state.vector is None or len(state.vector) % 4 == 0
    else:
        model.iso(state.created_at)
    for clock in clocks:
        assert HLC.unpack(clock).pack() == clock and clock.isascii() and "\n" not in clock
    again = decode(_wire(entity_id, _encode(state)))  # encodes (UTF-8), and reads back the same
    assert again == _as_sent(state)


@ci(300)
@given(found=payloads())
@example(found=(MEMORY.id, HEAD.pack(1, b"m", 100_002) + b"[" * 50_001 + b"]" * 50_001))
@example(found=_memory_with(content="\ud800"))  # a lone surrogate: SQLite cannot store it
@example(found=_memory_with(hlc="not a clock"))  # apply parses the newest clock
@example(found=_memory_with(hlc="\u0661" * 13 + "-0000-dev"))  # int() reads Arabic digits
@example(found=_memory_with(created_at=10**20))  # past SQLite's integers and datetime's years
@example(found=_memory_with(deleted="false"))  # a string that bool() takes for True
@example(found=_relation_with(created_at=-(10**18)))
@example(found=_relation_with(type="likes"))
@example(found=_v2_memory_with(content="\ud800"))
@example(found=_v2_memory_with(content=b"\x00" * 8))  # a bin that is not zlib
@example(found=_v2_memory_with(content=zlib.compress(b"\xff")))  # inflates to bytes, not UTF-8
@example(found=_v2_memory_with(hlc=None, created_hlc="not a clock"))
@example(found=_v2_memory_with(vector_width=3))
@example(found=_v2_memory_with(vector_width=True))
@example(found=_v2_memory_with(content_hash=b"\x01" * 31))
@example(found=_v2_memory_with(revisions=[[1, 2]]))
@example(found=_v2_memory_with(field_hlc={1: "x"}))  # a map key that is not a string
def test_a_pulled_payload_decodes_or_is_set_aside(found: tuple[str, bytes]) -> None:
    _check_decode(*found)


@ci(60)
@given(state=memory_states | relation_states)
def test_any_state_encodes_and_decodes_to_itself(state: MemoryState | RelationState) -> None:
    assert decode(_wire(_entity_id(state), _encode(state))) == _as_sent(state)


@pytest.fixture(scope="module")
def puller(
    tmp_path_factory: pytest.TempPathFactory, embedder: OnnxEmbedder
) -> tuple[Store, MemoryRemote, Syncer]:
    store = Store(Database(tmp_path_factory.mktemp("pull") / "cairn.db"), embedder, project="p")
    remote = MemoryRemote(HOSTED)  # payloads travel in the clear: the fuzzed bytes arrive as is
    return store, remote, Syncer(store, remote, None)


@ci(60)
@given(found=payloads())
@example(found=_memory_with(hlc="not a clock"))
@example(found=_memory_with(created_at=10**20))
@example(found=_relation_with(type="likes"))
@example(found=(SHORT.memory.id, bytes([FORMAT + 1]) + _encode(SHORT)[1:]))  # a newer format
def test_a_pull_applies_the_rest_of_a_page_around_an_unreadable_payload(
    puller: tuple[Store, MemoryRemote, Syncer], embedder: OnnxEmbedder, found: tuple[str, bytes]
) -> None:
    store, remote, syncer = puller
    content = f"good {uuid7()}"
    good = replace(
        SHORT,
        memory=replace(
            MEMORY,
            id=uuid7(),
            content=content,
            content_hash=model.content_hash(content),
            model_id=embedder.model_id,
        ),
        vector=np.ones(DIM, dtype="<f4").tobytes(),
    )
    entity_id, payload = found
    remote.push(
        [
            _wire(entity_id, payload, "fedcba9876543210"),
            _wire(good.memory.id, encode_memory(good), "fedcba9876543210"),
        ]
    )
    report = syncer.pull()
    assert report.received == 2
    assert store.get(good.memory.id).content == good.memory.content


@pytest.mark.slow
@pytest.mark.timeout(1800)
@soak(10_000)
@given(found=payloads(), state=memory_states | relation_states)
def test_payloads_soak(found: tuple[str, bytes], state: MemoryState | RelationState) -> None:
    _check_decode(*found)
    assert decode(_wire(_entity_id(state), _encode(state))) == _as_sent(state)
