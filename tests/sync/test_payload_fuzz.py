"""Fuzzing the sync payload: a pulled payload may be anything another device (or a remote) sent.

``decode`` returns a state or raises PayloadError, the one error the sync engine sets a pulled
mutation aside for; any other exception would stop the whole pull. A state it accepts is one the
store can hold (its clocks parse, its times display, its text is UTF-8) and encodes back to the
same state; and a pull that meets an unreadable payload still applies the rest of the page.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cairn import model, replication
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
    PayloadError,
    decode,
    encode_memory,
    encode_relation,
    relation_entity_id,
)

from ..fuzzing import ci, mutated, mutated_json, parse_or_refuse, soak

HEAD = struct.Struct(">BcI")
DIM = 384

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


def _body(state: MemoryState | RelationState) -> object:
    """The JSON document inside a valid payload of ``state``."""
    payload = _encode(state)
    _version, kind, size = HEAD.unpack_from(payload)
    data = payload[HEAD.size : HEAD.size + size]
    return json.loads(zlib.decompress(data) if kind.isupper() else data)


@st.composite
def payloads(draw: st.DrawFn) -> tuple[str, bytes]:
    """(entity id, payload): a valid payload with bytes or fields mutated, or any bytes."""
    state = draw(st.sampled_from(VALID))
    how = draw(st.sampled_from(["bytes", "fields", "fields", "any"]))
    if how == "bytes":
        return _entity_id(state), draw(mutated(_encode(state)))
    if how == "any":
        return _entity_id(state), draw(st.binary(max_size=300))
    data = draw(mutated_json(_body(state))).encode()
    kind = b"m" if isinstance(state, MemoryState) else b"r"
    if draw(st.booleans()):
        data, kind = zlib.compress(data, 1), kind.upper()
    tail = draw(st.sampled_from([b"", b"\x00" * 16, b"\x00" * 7]))
    return _entity_id(state), HEAD.pack(1, kind, len(data)) + data + tail


def _packed(kind: bytes, body: dict[str, object], tail: bytes = b"") -> bytes:
    data = json.dumps(body).encode()
    return HEAD.pack(1, kind, len(data)) + data + tail


def _memory_with(**changes: object) -> tuple[str, bytes]:
    body = _body(SHORT)
    assert isinstance(body, dict)
    return MEMORY.id, _packed(b"m", {**body, **changes})


def _relation_with(**changes: object) -> tuple[str, bytes]:
    body = _body(RELATION)
    assert isinstance(body, dict)
    return relation_entity_id(RELATION), _packed(b"r", {**body, **changes})


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
    assert again == state


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
def test_a_pulled_payload_decodes_or_is_set_aside(found: tuple[str, bytes]) -> None:
    _check_decode(*found)


@ci(60)
@given(state=memory_states | relation_states)
def test_any_state_encodes_and_decodes_to_itself(state: MemoryState | RelationState) -> None:
    assert decode(_wire(_entity_id(state), _encode(state))) == state


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
    assert decode(_wire(_entity_id(state), _encode(state))) == state
