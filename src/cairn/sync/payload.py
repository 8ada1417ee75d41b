"""A mutation's payload: an entity's whole state as bytes, and the envelope around it.

Layout (version 1)::

    b"\x01" | kind | uint32 big-endian length of the body | body (JSON) | vector

kind is b"m" (memory) or b"r" (relation), upper case when the JSON is zlib-compressed: done for
JSON of 1 KiB or more when that saves an eighth, which long texts do. The vector (little-endian
float32) rides raw after it (it does not compress), so a pull never re-embeds and never
base64-decodes twice.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import zlib
from typing import Any

from cairn import hlc
from cairn.errors import InvalidInput
from cairn.model import MAX_MS, MIN_MS, Memory, is_text
from cairn.protocol import RELATION_PREFIX, WireMutation
from cairn.replication import MemoryState, RelationState, Revision

FORMAT = 1
MAX_BODY = 4 * 1024 * 1024
COMPRESS_FROM = 1024
"""Shorter JSON is sent as is: zlib on a typical 500-byte memory saved 10 % of the bytes on the
wire and cost 12 % of push and pull throughput (bench/bench_sync.py)."""
_HEAD = struct.Struct(">BcI")


class PayloadError(InvalidInput):
    """A pulled payload is not a state this version of Cairn can read; it is set aside."""

    code = "bad_payload"


HOSTED_SCOPE_KEY = b"cairn hosted workspace"
"""The scope key of a hosted workspace, whose server reads the projects anyway."""


def scope_tag(scope_key: bytes, project: str) -> str:
    """A blind scope tag: the remote can filter by it without learning the project's name."""
    return hmac.new(scope_key, project.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def relation_entity_id(state: RelationState) -> str:
    """An opaque entity id for a relation (its endpoints and type stay in the payload)."""
    return RELATION_PREFIX + hashlib.sha256(state.key.encode("utf-8")).hexdigest()[:32]


def encode_memory(state: MemoryState) -> bytes:
    m = state.memory
    body = {
        "id": m.id,
        "content": m.content,
        "kind": m.kind,
        "project": m.project,
        "tags": list(m.tags),
        "topic_key": m.topic_key,
        "source": m.source,
        "created_at": m.created_at,
        "updated_at": m.updated_at,
        "deleted": m.deleted,
        "content_hash": m.content_hash,
        "model_id": m.model_id if state.vector is not None else None,
        "hlc": state.hlc,
        "created_hlc": state.created_hlc,
        "field_hlc": state.field_hlc,
        "ancestors": list(state.ancestors),
        "revisions": [[r.hlc, r.content, r.content_hash] for r in state.revisions],
    }
    return _pack(b"m", body, state.vector or b"")


def encode_relation(state: RelationState) -> bytes:
    body = {
        "from_id": state.from_id,
        "to_id": state.to_id,
        "type": state.type,
        "created_at": state.created_at,
        "deleted": state.deleted,
        "hlc": state.hlc,
    }
    return _pack(b"r", body, b"")


def _pack(kind: bytes, body: dict[str, Any], tail: bytes) -> bytes:
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(data) >= COMPRESS_FROM:
        packed = zlib.compress(data, 1)
        if len(packed) <= len(data) * 7 // 8:
            kind, data = kind.upper(), packed
    return _HEAD.pack(FORMAT, kind, len(data)) + data + tail


def _unpack_body(kind: bytes, data: bytes) -> dict[str, Any]:
    if kind.isupper():
        inflater = zlib.decompressobj()
        data = inflater.decompress(data, MAX_BODY)
        if inflater.unconsumed_tail:
            raise PayloadError(f"a payload's text inflates past {MAX_BODY} bytes")
    try:
        body = json.loads(data)
    except RecursionError as exc:  # nesting past the interpreter's stack
        raise PayloadError("a payload's text nests too deeply") from exc
    if not isinstance(body, dict):
        raise PayloadError("a payload's text is not a JSON object")
    return body


def decode(mutation: WireMutation, opened: bytes | None = None) -> MemoryState | RelationState:
    """The state a pulled mutation carries (``opened``: its payload once unsealed);
    PayloadError if it is not a readable one.

    Everything in it came from another device, so it is checked as the store will use it: its
    clocks are packed HLCs, its times are ones a date can show, its text is valid UTF-8."""
    payload = mutation.payload if opened is None else opened
    try:
        version, kind, size = _HEAD.unpack_from(payload)
        if version != FORMAT:
            raise PayloadError(f"payload format {version} is newer than this Cairn; upgrade")
        body = _unpack_body(kind, payload[_HEAD.size : _HEAD.size + size])
        tail = payload[_HEAD.size + size :]
        kind = kind.lower()
        if kind == b"m":
            return _memory(body, tail, mutation)
        if kind == b"r":
            state = RelationState(
                _str(body, "from_id"),
                _str(body, "to_id"),
                _str(body, "type"),
                _time(body, "created_at"),
                _bool(body, "deleted"),
                _clock(body["hlc"]),
            )
            if relation_entity_id(state) != mutation.entity_id:
                raise PayloadError("a relation payload does not belong to its entity id")
            return state
        raise PayloadError(f"unknown payload kind {kind!r}")
    except PayloadError:
        raise
    except (struct.error, ValueError, KeyError, TypeError, zlib.error) as exc:
        raise PayloadError(
            f"mutation {mutation.mutation_id} has an unreadable payload ({exc})"
        ) from exc


def _memory(body: dict[str, Any], vector: bytes, mutation: WireMutation) -> MemoryState:
    if _str(body, "id") != mutation.entity_id:
        raise PayloadError("a memory payload does not belong to its entity id")
    if len(vector) % 4:
        raise PayloadError("a memory's vector is not whole float32 values")
    field_hlc = body["field_hlc"]
    ancestors = body["ancestors"]
    tags = body["tags"]
    if not isinstance(field_hlc, dict) or not all(
        is_text(k) and hlc.is_packed(v) for k, v in field_hlc.items()
    ):
        raise PayloadError("field_hlc must map field names to clocks")
    if not isinstance(ancestors, list) or not all(hlc.is_packed(a) for a in ancestors):
        raise PayloadError("ancestors must be a list of clocks")
    if not isinstance(tags, list) or not all(is_text(t) for t in tags):
        raise PayloadError("tags must be a list of strings")
    revisions = body["revisions"]
    if not isinstance(revisions, list) or not all(
        isinstance(r, list) and len(r) == 3 and hlc.is_packed(r[0]) and all(map(is_text, r))
        for r in revisions
    ):
        raise PayloadError("revisions must be a list of [clock, content, hash]")
    topic_key = body["topic_key"]
    model_id = body["model_id"]
    memory = Memory(
        id=body["id"],
        content=_str(body, "content"),
        kind=_str(body, "kind"),
        project=_str(body, "project"),
        tags=tuple(sorted(set(tags))),
        topic_key=topic_key if is_text(topic_key) else None,
        source=_str(body, "source"),
        created_at=_time(body, "created_at"),
        updated_at=_time(body, "updated_at"),
        deleted=_bool(body, "deleted"),
        content_hash=_str(body, "content_hash"),
        model_id=model_id if is_text(model_id) and vector else None,
        hlc=_clock(body["hlc"]),
    )
    return MemoryState(
        memory,
        _clock(body["created_hlc"]),
        dict(field_hlc),
        tuple(ancestors),
        vector or None,
        tuple(Revision(*r) for r in revisions),
    )


def _clock(value: object) -> str:
    if not hlc.is_packed(value):
        raise PayloadError(f"{value!r:.80} is not a packed clock")
    return value


def _time(body: dict[str, Any], key: str) -> int:
    value = _int(body, key)
    if not MIN_MS <= value <= MAX_MS:
        raise PayloadError(f"{key} is not a time between the years 1 and 9999")
    return value


def _bool(body: dict[str, Any], key: str) -> bool:
    value = body[key]
    if not isinstance(value, bool):
        raise PayloadError(f"{key} must be true or false")
    return value


def _str(body: dict[str, Any], key: str) -> str:
    value = body[key]
    if not is_text(value):
        raise PayloadError(f"{key} must be a string of UTF-8 text")
    return value


def _int(body: dict[str, Any], key: str) -> int:
    value = body[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise PayloadError(f"{key} must be an integer")
    return value
