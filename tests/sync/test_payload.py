"""Payload encoding: long texts are compressed, and what cannot be read is refused clearly."""

from __future__ import annotations

import struct
import zlib

import pytest

from cairn.model import Memory
from cairn.protocol import WireMutation
from cairn.replication import MemoryState, Revision
from cairn.sync.payload import FORMAT, PayloadError, decode, encode_memory

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


def _wire(body: bytes) -> WireMutation:
    return WireMutation("m-1", "dev", MEMORY.hlc, MEMORY.id, None, body)


def test_a_memory_state_round_trips_and_long_text_is_compressed() -> None:
    body = encode_memory(STATE)
    assert body[1:2] == b"M"  # upper case: the JSON is compressed
    assert len(body) < len(MEMORY.content) // 2 + len(STATE.vector or b"")
    assert decode(_wire(body)) == STATE


def test_a_payload_that_inflates_without_end_is_refused() -> None:
    bomb = zlib.compress(b"{" + b" " * (8 * 1024 * 1024), 9)
    body = struct.pack(">BcI", FORMAT, b"M", len(bomb)) + bomb
    with pytest.raises(PayloadError, match="inflates"):
        decode(_wire(body))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x01m",
        struct.pack(">BcI", 9, b"m", 2) + b"{}",
        struct.pack(">BcI", 1, b"m", 2) + b"{}",
    ],
)
def test_unreadable_payloads_are_payload_errors(body: bytes) -> None:
    with pytest.raises(PayloadError):
        decode(_wire(body))


def test_a_payload_under_another_entity_id_is_refused() -> None:
    moved = WireMutation("m-1", "dev", MEMORY.hlc, "another-id", None, encode_memory(STATE))
    with pytest.raises(PayloadError, match="does not belong"):
        decode(moved)
