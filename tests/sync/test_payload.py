"""Payload encoding: format 2 is compact, every format-1 payload still reads, and what cannot
be read is refused clearly."""

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

from cairn import vector_bytes
from cairn.crypto.seal import open_sealed
from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
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

FIXTURES = Path(__file__).resolve().parent.parent / "data" / "payloads_v1.json"
MEMORY = Memory(
    id="01a20000-0000-7000-8000-000000000001",
    content="The billing service retries webhooks with exponential backoff. " * 40,
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
STATE = MemoryState(
    MEMORY,
    "1795000000000-0000-dev",
    {"content": "1795000000500-0001-dev"},
    ("1795000000000-0000-dev",),
    b"\x00\x00\x80\x3f" * 384,
    (Revision("1795000000400-0000-other", "older text", "cd" * 32),),
)


def _wire(body: bytes, entity_id: str = MEMORY.id) -> WireMutation:
    return WireMutation("m-1", "dev", MEMORY.hlc, entity_id, None, body)


def _fields(body: bytes) -> list[Any]:
    assert body[0] == FORMAT
    fields: list[Any] = msgpack.unpackb(body[1:], raw=False)
    return fields


def _v2(fields: list[Any]) -> bytes:
    return bytes([FORMAT]) + msgpack.packb(fields, use_bin_type=True)


def test_a_memory_state_round_trips_and_long_text_is_compressed() -> None:
    body = encode_memory(STATE)
    fields = dict(zip(("entity", *MEMORY_FIELDS), _fields(body), strict=True))
    assert isinstance(fields["content"], bytes)  # a bin: the text, compressed
    assert fields["vector_width"] == vector_bytes.FLOAT16 and len(fields["vector"]) == 768
    assert fields["content_hash"] == bytes.fromhex("ab" * 32)  # 32 bytes, not 64 hex digits
    assert len(body) < len(MEMORY.content) // 2 + 768
    assert decode(_wire(body)) == STATE  # 1.0 is exact in float16


def test_a_short_memory_travels_in_half_the_bytes_of_format_1() -> None:
    fixture = next(p for p in json.loads(FIXTURES.read_text())["payloads"] if p["name"] == "short")
    old = bytes.fromhex(fixture["payload"])
    state = decode(_wire(old, fixture["entity_id"]))
    assert len(encode_memory(state)) < len(old) / 2  # 1,003 bytes instead of 2,095


def test_a_vector_loses_only_float16_precision_and_keeps_its_direction() -> None:
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((200, 384)).astype("<f4")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sent = [decode(_wire(encode_memory(replace(STATE, vector=v.tobytes())))) for v in vectors]
    got = np.array(
        [np.frombuffer(s.vector or b"", "<f4") for s in sent if isinstance(s, MemoryState)]
    )
    assert np.abs(got - vectors).max() <= np.abs(vectors).max() * 2**-11
    cosines = (vectors @ vectors.T).ravel()
    assert np.abs((got @ got.T).ravel() - cosines).max() < 1e-3
    again = decode(_wire(encode_memory(replace(STATE, vector=got[0].tobytes()))))
    assert isinstance(again, MemoryState) and again.vector == got[0].tobytes()  # exact now


def test_a_vector_float16_cannot_hold_travels_as_float32_unchanged() -> None:
    vector = np.array([1e6, -3.0, np.nan, 0.25], dtype="<f4").tobytes()
    body = encode_memory(replace(STATE, vector=vector))
    assert _fields(body)[MEMORY_FIELDS.index("vector_width") + 1] == vector_bytes.FLOAT32
    decoded = decode(_wire(body))
    assert isinstance(decoded, MemoryState) and decoded.vector == vector


def test_a_relation_round_trips_and_cannot_move_to_another_entity() -> None:
    relation = RelationState(MEMORY.id, "01a2-other", "relates_to", 1, False, MEMORY.hlc)
    body = encode_relation(relation)
    assert decode(_wire(body, relation_entity_id(relation))) == relation
    with pytest.raises(PayloadError, match="does not belong"):
        decode(_wire(body, "rel-0123456789abcdef0123456789abcdef"))


def test_texts_that_inflate_without_end_are_refused_even_in_small_pieces() -> None:
    fields = _fields(encode_memory(STATE))
    fields[1] = zlib.compress(b" " * (MAX_TEXT + 1), 9)
    with pytest.raises(PayloadError, match="inflate"):
        decode(_wire(_v2(fields)))
    piece = zlib.compress(b" " * (MAX_TEXT // 4), 9)  # each under the bound, all over it
    fields = _fields(encode_memory(STATE))
    fields[MEMORY_FIELDS.index("revisions") + 1] = [["1795000000400-0000-x", piece, "h"]] * 5
    with pytest.raises(PayloadError, match="inflate"):
        decode(_wire(_v2(fields)))


def test_a_payload_of_a_newer_format_is_refused_with_its_number() -> None:
    body = bytes([FORMAT + 1]) + encode_memory(STATE)[1:]
    with pytest.raises(PayloadError, match=f"payload format {FORMAT + 1}, newer than"):
        decode(_wire(body))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x00",
        b"\x01m",
        struct.pack(">BcI", 1, b"m", 2) + b"{}",
        b"\x02",
        b"\x02\xc1",  # a byte MessagePack never uses
        _v2(["m"]),
        _v2(["x", 1, 2]),
        b"\x02" + msgpack.packb(["r", msgpack.ExtType(1, b"x"), "b", "c", 1, False, "h"]),
        _v2(["m", *([None] * len(MEMORY_FIELDS))]),
        _v2(["m", *_fields(encode_memory(STATE))[1:-1], b"\x00" * 3]),  # not whole float16s
        encode_memory(STATE) + b"\x00",  # trailing bytes
    ],
)
def test_unreadable_payloads_are_payload_errors(body: bytes) -> None:
    with pytest.raises(PayloadError):
        decode(_wire(body))


def _fixture_state(doc: dict[str, Any]) -> MemoryState | RelationState:
    if "relation" in doc:
        return RelationState(**doc["relation"])
    vector = doc["vector"]
    return MemoryState(
        Memory(**doc["memory"] | {"tags": tuple(doc["memory"]["tags"])}),
        doc["created_hlc"],
        doc["field_hlc"],
        tuple(doc["ancestors"]),
        bytes.fromhex(vector) if vector else None,
        tuple(Revision(*r) for r in doc["revisions"]),
    )


@pytest.mark.parametrize(
    "fixture", json.loads(FIXTURES.read_text())["payloads"], ids=lambda f: f["name"]
)
def test_every_format_1_payload_still_reads_and_carries_over_to_format_2(
    fixture: dict[str, Any],
) -> None:
    """Payloads as Cairn wrote them before format 2 (``tests/data/payloads_v1.json``)."""
    payload = bytes.fromhex(fixture["payload"])
    if "sealed" in fixture:  # sealed in an end-to-end workspace, bound to its ids
        key = fixture["sealed"]
        aad = f"{key['keyring_id']}|{fixture['entity_id']}|{key['mutation_id']}".encode()
        payload = open_sealed(
            lambda key_id: bytes.fromhex(key["data_key"]) if key_id == key["key_id"] else None,
            payload,
            aad,
        )
    assert payload[0] == 1
    state = decode(_wire(payload, fixture["entity_id"]))
    expected = _fixture_state(fixture["state"])
    assert state == expected
    if isinstance(state, MemoryState):
        again = decode(_wire(encode_memory(state), fixture["entity_id"]))
        vector = state.vector and vector_bytes.stored(np.frombuffer(state.vector, "<f4"))
        assert again == replace(state, vector=vector)
    else:
        assert decode(_wire(encode_relation(state), fixture["entity_id"])) == state


def test_a_pull_sets_a_newer_format_aside_with_its_reason_and_applies_the_rest(
    tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    """What a device meets when another runs a newer Cairn: a dead letter that says so."""
    store = Store(Database(tmp_path / "cairn.db"), embedder, project="p")
    remote = MemoryRemote(HOSTED)  # payloads travel as they are
    good = replace(
        STATE,
        memory=replace(
            MEMORY, id="01a20000-0000-7000-8000-000000000002", model_id=embedder.model_id
        ),
        vector=np.ones(embedder.dim, dtype="<f4").tobytes(),
    )
    newer = bytes([FORMAT + 1]) + encode_memory(STATE)[1:]
    device = "fedcba9876543210"
    remote.push(
        [
            WireMutation("m-1", device, MEMORY.hlc, MEMORY.id, None, newer),
            WireMutation("m-2", device, MEMORY.hlc, good.memory.id, None, encode_memory(good)),
        ]
    )
    syncer = Syncer(store, remote, None)
    report = syncer.pull()
    assert (report.received, report.applied, report.failed) == (2, 1, 1)
    [letter] = syncer.dead_letters()
    assert (letter.entity_id, letter.code, letter.direction) == (MEMORY.id, "bad_payload", "pull")
    assert f"payload format {FORMAT + 1}, newer than this Cairn" in letter.message
    assert store.get(good.memory.id).content == good.memory.content
