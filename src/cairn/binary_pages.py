"""The sync protocol's binary form: push bodies and pull pages as MessagePack (no I/O).

Negotiated by content type (``MEDIA_TYPE``): a push sends it as its Content-Type, a pull asks
for it in Accept; JSON stays the answer to anyone who does not ask. The same mutations as the
JSON form (``cairn.protocol``), with the payload as raw bytes instead of base64 and each
mutation as an array instead of an object, so no field name repeats::

    push body  {"mutations": [[v, mutation_id, device_id, hlc, entity_id, scope, payload], ...]}
    pull page  {"mutations": [[v, mutation_id, device_id, hlc, entity_id, scope, payload, seq],
               ...], "next": "42", "has_more": false}

``scope`` is a string or nil, ``payload`` a bin, ``v`` and ``seq`` integers. Decoding trusts
nothing: the unpacker is bounded (no extension types, no string or bin longer than a field may
be, no array longer than a batch, string map keys only), then every mutation goes through the
same checks as JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

import msgpack

from cairn.errors import InvalidInput
from cairn.protocol import (
    MAX_BATCH,
    MAX_PAYLOAD_BYTES,
    MAX_PULL_LIMIT,
    MAX_SEQ,
    PullPage,
    WireMutation,
    checked_page,
)

MEDIA_TYPE = "application/vnd.cairn.page+msgpack"
"""The binary form's content type, in a push's Content-Type and a pull's Accept."""

MAX_STRING = 1024
"""No string of the protocol is longer (ids take 160 ASCII characters at most); a longer one is
refused by the unpacker before any check reads it."""

_PUSH_FIELDS, _PAGE_FIELDS = 7, 8


def _reject_ext(code: int, data: bytes) -> NoReturn:
    raise ValueError(f"extension type {code} is not part of the protocol")


def _unpack(body: bytes, what: str) -> dict[str, Any]:
    """The top-level map of a binary body; InvalidInput when it is not MessagePack or breaks a
    bound (the unpacker's own limits keep a hostile body from costing more than its size)."""
    try:
        data = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_reject_ext,
            max_ext_len=0,
            max_str_len=MAX_STRING,
            max_bin_len=MAX_PAYLOAD_BYTES,
            max_array_len=max(MAX_BATCH, MAX_PULL_LIMIT),
            max_map_len=8,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # every unpacker failure
        raise InvalidInput(
            f"the {what} is not valid {MEDIA_TYPE} ({type(exc).__name__}: {exc}); "
            "see the sync protocol in the server docs"
        ) from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"the {what} must be a MessagePack map with a 'mutations' array")
    return data


def _mutation(item: Any, with_seq: bool) -> WireMutation:
    """One mutation from its array form; InvalidInput when a field has the wrong type."""
    count = _PAGE_FIELDS if with_seq else _PUSH_FIELDS
    if not isinstance(item, list) or len(item) != count:
        raise InvalidInput(
            f"each mutation must be an array of {count} fields (v, mutation_id, device_id, "
            f"hlc, entity_id, scope, payload{', seq' if with_seq else ''})"
        )
    version, mutation_id, device_id, clock, entity_id, scope, payload = item[:7]
    if not isinstance(version, int) or isinstance(version, bool):
        raise InvalidInput("a mutation's v (version) must be an integer")
    if not (
        isinstance(mutation_id, str)
        and isinstance(device_id, str)
        and isinstance(clock, str)
        and isinstance(entity_id, str)
    ):
        raise InvalidInput("mutation_id, device_id, hlc and entity_id must be strings")
    if scope is not None and not isinstance(scope, str):
        raise InvalidInput("a mutation's scope must be a string or nil")
    if not isinstance(payload, bytes):
        raise InvalidInput("a mutation's payload must be a bin (raw bytes)")
    seq = None
    if with_seq:
        seq = item[7]
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
            raise InvalidInput(f"a mutation's seq must be an integer from 0 to {MAX_SEQ}")
    return WireMutation(mutation_id, device_id, clock, entity_id, scope, payload, seq, version)


def _mutations(items: Any, with_seq: bool) -> list[WireMutation]:
    if not isinstance(items, list):
        raise InvalidInput("'mutations' must be a MessagePack array")
    return [_mutation(item, with_seq) for item in items]


def pack_push(mutations: Sequence[WireMutation]) -> bytes:
    """A push body in the binary form."""
    body: bytes = msgpack.packb(
        {
            "mutations": [
                [m.version, m.mutation_id, m.device_id, m.hlc, m.entity_id, m.scope, m.payload]
                for m in mutations
            ]
        },
        use_bin_type=True,
    )
    return body


def packed_size(m: WireMutation) -> int:
    """The bytes ``m`` takes in a binary push body (``pack_push``), counted without packing."""
    scope = 1 if m.scope is None else _str_size(m.scope)  # nil, or the string
    fields = (m.mutation_id, m.device_id, m.hlc, m.entity_id)
    size = len(m.payload)
    payload = size + (2 if size < 2**8 else 3 if size < 2**16 else 5)  # bin 8, 16 or 32
    version = 1 if 0 <= m.version < 128 else len(msgpack.packb(m.version))
    return 1 + version + sum(map(_str_size, fields)) + scope + payload  # 1: the array's header


def _str_size(text: str) -> int:
    size = len(text.encode("utf-8"))
    return size + (1 if size < 32 else 2 if size < 2**8 else 3 if size < 2**16 else 5)


def unpack_push(body: bytes) -> list[WireMutation]:
    """The mutations of a binary push body, each field typed (``check_batch`` checks the
    rest); InvalidInput when it is not one."""
    data = _unpack(body, "request body")
    if set(data) != {"mutations"}:
        raise InvalidInput("the request body must be a MessagePack map {'mutations': [...]}")
    return _mutations(data["mutations"], with_seq=False)


def pack_page(mutations: Sequence[WireMutation], cursor: str, has_more: bool) -> bytes:
    """A pull page in the binary form (what ``protocol.page_body`` writes as JSON)."""
    body: bytes = msgpack.packb(
        {
            "mutations": [
                [
                    m.version,
                    m.mutation_id,
                    m.device_id,
                    m.hlc,
                    m.entity_id,
                    m.scope,
                    m.payload,
                    m.seq or 0,
                ]
                for m in mutations
            ],
            "next": cursor,
            "has_more": has_more,
        },
        use_bin_type=True,
    )
    return body


def unpack_page(body: bytes) -> PullPage:
    """A pull page from its binary form; InvalidInput when it is not one, or when it holds a
    mutation no remote would have stored (``problem``), as ``protocol.page_from_json``."""
    return checked_page(_unpack(body, "pull page"), lambda items: _mutations(items, True))


def accepts(header: str | None) -> bool:
    """Whether an Accept header asks for the binary form (listed with a quality above 0)."""
    for part in (header or "").split(","):
        media, _, params = part.partition(";")
        if media.strip().lower() != MEDIA_TYPE:
            continue
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        return quality > 0
    return False


def is_binary(content_type: str | None) -> bool:
    """Whether a Content-Type header names the binary form."""
    return (content_type or "").partition(";")[0].strip().lower() == MEDIA_TYPE
