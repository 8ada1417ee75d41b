"""The bytes of an object remote's objects: packed batches and snapshot parts, bounded JSON."""

from __future__ import annotations

import json
import re
import struct
import time
import zlib
from collections.abc import Sequence
from typing import Any

from cairn.protocol import WireMutation, problem

FORMAT = 1
FRAME = b"CAO1"
"""What a sealed object starts with (before the sealed bytes)."""
NUMBER_DIGITS = 12
"""Digits in a batch's or a snapshot's name: ordered by name as by number."""
NUMBERED = re.compile(r"[0-9]{12}")
"""A batch or snapshot: NUMBER_DIGITS ASCII digits (isdigit() and int() take any script's
digits, and isdigit() some int() refuses, such as superscripts)."""
MAX_INFLATED = 32 * 1024 * 1024
"""The most an object's compressed JSON may inflate to (a batch of 10,000 mutations' fields is
about 8 MiB): a compression bomb in the bucket is refused before it is in memory."""
MAX_NUMBER = 2**62
"""The largest batch number, position or count read from an object or a cursor."""
_HEAD = struct.Struct(">I")  # the size of a packed batch's compressed fields


def batch_path(device: str, number: int) -> str:
    """The name of a device's batch ``number`` in its log."""
    return f"log/{device}/{number:0{NUMBER_DIGITS}d}"


def pack(mutations: Sequence[WireMutation], extra: list[list[int]] | None = None) -> bytes:
    """A batch's (or a snapshot part's) bytes: the mutations' fields (and ``extra`` numbers per
    mutation) as compressed JSON, then their payloads as they are. Sealed payloads do not
    compress, and base64 would make them a third larger, so only the fields are compressed."""
    rows = [
        [*(extra[k] if extra else ()), m.version, m.mutation_id, m.device_id, m.hlc]
        + [m.entity_id, m.scope, len(m.payload)]
        for k, m in enumerate(mutations)
    ]
    head = zlib.compress(dumps(rows), 6)
    return b"".join([_HEAD.pack(len(head)), head, *(m.payload for m in mutations)])


def unpack(data: bytes, extra: int = 0) -> tuple[list[WireMutation], list[list[int]]]:
    """The mutations ``pack`` wrote, and their extra numbers; ValueError if it is not one (or
    holds a mutation no remote would store)."""
    (size,) = _HEAD.unpack_from(data)
    rows = parse_json(inflate(data[_HEAD.size : _HEAD.size + size]))
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise ValueError("its fields are not a list of rows")
    offset = _HEAD.size + size
    mutations: list[WireMutation] = []
    numbers: list[list[int]] = []
    for row in rows:
        numbers.append([whole_number(n) for n in row[:extra]])
        version, mutation_id, device_id, hlc, entity_id, scope, length = row[extra:]
        if not all(isinstance(f, str) for f in (mutation_id, device_id, hlc, entity_id)):
            raise ValueError("a mutation's ids and clock must be strings")
        if not isinstance(version, int) or not isinstance(length, int) or length < 0:
            raise ValueError("a mutation's version and size must be numbers")
        if scope is not None and not isinstance(scope, str):
            raise ValueError("a mutation's scope must be a string or null")
        payload = data[offset : offset + length]
        offset += length
        mutation = WireMutation(
            mutation_id, device_id, hlc, entity_id, scope, payload, None, version
        )
        found = problem(mutation)
        if found is not None:
            raise ValueError(f"it holds a mutation no remote stores: {found[1]}")
        mutations.append(mutation)
    if offset != len(data):
        raise ValueError("its payloads do not add up to its size")
    return mutations, numbers


def inflate(data: bytes) -> bytes:
    """zlib data inflated, up to ``MAX_INFLATED`` bytes; ValueError past that or cut short."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, MAX_INFLATED)
    if inflater.unconsumed_tail or (not inflater.eof and len(out) >= MAX_INFLATED):
        raise ValueError(f"it inflates past {MAX_INFLATED} bytes")
    if not inflater.eof:
        raise ValueError("its compressed data is cut short")
    return out


def parse_json(data: bytes) -> Any:
    """An object's JSON; ValueError when it is not JSON or nests past the interpreter's stack."""
    try:
        return json.loads(data)
    except RecursionError as exc:
        raise ValueError("its JSON nests too deeply") from exc


def whole_number(value: Any, high: int = MAX_NUMBER) -> int:
    """A whole number from 0 to ``high`` as this code writes it: ValueError for a float (1e400
    is infinity), a bool, a string, or one out of range."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= high:
        return value
    raise ValueError(f"{value!r:.40} is not a whole number from 0 to {high}")


def dumps(data: Any) -> bytes:
    """Compact JSON bytes."""
    return json.dumps(data, separators=(",", ":")).encode()


def now_ms() -> int:
    """The wall clock in milliseconds, as objects record it."""
    return int(time.time() * 1000)
