"""A mutation's payload: an entity's whole state as bytes, written in format 2, read in any.

Format 2 (written)::

    b"\x02" | MessagePack array
    memory    ["m", content, kind, project, tags, topic_key, source, created_at, updated_at,
               deleted, content_hash, model_id, hlc, created_hlc, field_hlc, ancestors,
               revisions, vector_width, vector]
    relation  ["r", from_id, to_id, type, created_at, deleted, hlc]

Fields go by position, so no name repeats. A memory's id is its mutation's entity id (which the
sealed envelope is bound to), so it is not repeated; ``hlc`` is nil when it equals
``created_hlc`` (a memory never edited); a content hash of 64 hex digits travels as its 32
bytes; a text (content, a revision's content) of 1 KiB or more travels zlib-compressed, as a
bin instead of a str, when that saves an eighth. The vector is a bin of ``vector_width``-byte
little-endian floats: 2 (float16, half of float32's bytes; see ``cairn.vector_bytes``) unless
a value does not fit, then 4; nil without a vector. Each revision is ``[hlc, content, hash]``.

Format 1 (JSON, float32 vector) is still read (``payload_v1``): logs keep every payload ever
pushed. A payload of a newer format is a PayloadError that names it, which a pull sets aside
as a dead letter while it applies the rest (docs/sync.md, "Payloads").
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
import zlib
from typing import Any, NoReturn

import msgpack

from cairn import hlc, vector_bytes
from cairn.errors import InvalidInput
from cairn.model import MAX_MS, MIN_MS, Memory, is_text
from cairn.protocol import RELATION_PREFIX, WireMutation
from cairn.replication import MemoryState, RelationState, Revision
from cairn.sync import payload_v1

FORMAT = 2
MAX_TEXT = payload_v1.MAX_BODY
"""The most a payload's compressed texts may inflate to, all together."""
COMPRESS_FROM = 1024
"""Shorter text is sent as is: zlib on a typical 500-byte memory saved 10 % of the bytes on the
wire and cost 12 % of push and pull throughput (bench/bench_sync.py)."""
MEMORY_FIELDS = (
    "content", "kind", "project", "tags", "topic_key", "source", "created_at", "updated_at",
    "deleted", "content_hash", "model_id", "hlc", "created_hlc", "field_hlc", "ancestors",
    "revisions", "vector_width", "vector",
)  # fmt: skip
RELATION_FIELDS = ("from_id", "to_id", "type", "created_at", "deleted", "hlc")
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}", re.ASCII)


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


# --- writing (format 2) --------------------------------------------------------------------------


def encode_memory(state: MemoryState) -> bytes:
    m = state.memory
    width, vector = vector_bytes.to_wire(state.vector) if state.vector else (0, None)
    return _pack(
        [
            "m",
            _text_out(m.content),
            m.kind,
            m.project,
            list(m.tags),
            m.topic_key,
            m.source,
            m.created_at,
            m.updated_at,
            m.deleted,
            _digest_out(m.content_hash),
            m.model_id if vector is not None else None,
            None if m.hlc == state.created_hlc else m.hlc,
            state.created_hlc,
            state.field_hlc,
            list(state.ancestors),
            [[r.hlc, _text_out(r.content), _digest_out(r.content_hash)] for r in state.revisions],
            width,
            vector,
        ]
    )


def encode_relation(state: RelationState) -> bytes:
    s = state
    return _pack(["r", s.from_id, s.to_id, s.type, s.created_at, s.deleted, s.hlc])


def _pack(fields: list[Any]) -> bytes:
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return bytes([FORMAT]) + packed


def _text_out(text: str) -> str | bytes:
    """A text as it travels: itself, or zlib-compressed (a bin) when long and that pays."""
    if len(text) < COMPRESS_FROM:
        return text
    data = text.encode("utf-8")
    packed = zlib.compress(data, 1)
    return packed if len(packed) <= len(data) * 7 // 8 else text


def _digest_out(digest: str) -> str | bytes:
    return bytes.fromhex(digest) if _HEX_DIGEST.fullmatch(digest) else digest


# --- reading (any format) ------------------------------------------------------------------------


def _reject_ext(code: int, data: bytes) -> NoReturn:
    raise ValueError(f"extension type {code} is not part of the payload format")


def _read(payload: bytes, entity_id: str) -> tuple[str, dict[str, Any], bytes]:
    """(``"m"`` or ``"r"``, the body's fields by name, the float32 vector's bytes) of a
    format-2 payload, in the shape format 1 has, for the checks both share."""
    fields = msgpack.unpackb(
        memoryview(payload)[1:], raw=False, use_list=True, ext_hook=_reject_ext, max_ext_len=0
    )
    if not isinstance(fields, list) or not fields or fields[0] not in ("m", "r"):
        raise ValueError("a format-2 payload is an array that starts with 'm' or 'r'")
    kind, names = fields[0], MEMORY_FIELDS if fields[0] == "m" else RELATION_FIELDS
    if len(fields) != len(names) + 1:
        raise ValueError(f"a format-2 {kind!r} payload has {len(names) + 1} fields")
    body = dict(zip(names, fields[1:], strict=True))
    if kind == "r":
        return kind, body, b""
    budget = [MAX_TEXT]
    body["id"] = entity_id
    body["content"] = _text_in(body["content"], budget)
    body["content_hash"] = _digest_in(body["content_hash"])
    if body["hlc"] is None:
        body["hlc"] = body["created_hlc"]
    revisions = body["revisions"]
    if isinstance(revisions, list):
        body["revisions"] = [
            [r[0], _text_in(r[1], budget), _digest_in(r[2])]
            if isinstance(r, list) and len(r) == 3
            else r
            for r in revisions
        ]
    vector, width = body.pop("vector"), body.pop("vector_width")
    if vector is None:
        return kind, body, b""
    if not isinstance(vector, bytes) or not isinstance(width, int):
        raise ValueError("a memory's vector must be a bin with an integer width")
    return kind, body, vector_bytes.from_wire(width, vector)


def _text_in(value: object, budget: list[int]) -> object:
    """A text as sent: a str as is, a bin inflated (within what is left of ``budget``)."""
    if not isinstance(value, bytes):
        return value
    inflater = zlib.decompressobj()
    data = inflater.decompress(value, budget[0])
    if inflater.unconsumed_tail or not inflater.eof:
        raise ValueError(f"a payload's texts inflate past {MAX_TEXT} bytes, or are cut short")
    budget[0] -= len(data)
    return data.decode("utf-8")


def _digest_in(value: object) -> object:
    return value.hex() if isinstance(value, bytes) and len(value) == 32 else value


def decode(mutation: WireMutation, opened: bytes | None = None) -> MemoryState | RelationState:
    """The state a pulled mutation carries (``opened``: its payload once unsealed);
    PayloadError if it is not a readable one.

    Everything in it came from another device, so it is checked as the store will use it: its
    clocks are packed HLCs, its times are ones a date can show, its text is valid UTF-8."""
    payload = mutation.payload if opened is None else opened
    version = payload[0] if payload else 0
    if version > FORMAT:
        raise PayloadError(
            f"mutation {mutation.mutation_id} is in payload format {version}, newer than this "
            f"Cairn reads (up to {FORMAT}); it was set aside: upgrade Cairn on this device"
        )
    try:
        if version == FORMAT:
            kind, body, vector = _read(payload, mutation.entity_id)
        elif version == payload_v1.VERSION:
            kind, body, vector = payload_v1.read(payload)
        else:
            raise ValueError("it is empty or starts with no known format")
        if kind == "m":
            return _memory(body, vector, mutation)
        if kind == "r":
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
    except (
        struct.error,
        ValueError,
        KeyError,
        TypeError,
        zlib.error,
        msgpack.UnpackException,
    ) as exc:
        raise PayloadError(
            f"mutation {mutation.mutation_id} has an unreadable payload ({exc})"
        ) from exc


def _memory(body: dict[str, Any], vector: bytes, mutation: WireMutation) -> MemoryState:
    if _str(body, "id") != mutation.entity_id:
        raise PayloadError("a memory payload does not belong to its entity id")
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
