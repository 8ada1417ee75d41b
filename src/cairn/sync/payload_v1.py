"""Reading payload format 1 (JSON body, float32 vector), which logs keep forever; none is written.

Layout::

    b"\x01" | kind | uint32 big-endian length of the body | body (JSON) | vector

kind is b"m" (memory) or b"r" (relation), upper case when the JSON is zlib-compressed. The
vector (little-endian float32) rides raw after the body. The body holds every field by name,
the memory's ``id`` among them.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

VERSION = 1
MAX_BODY = 4 * 1024 * 1024
"""The most a body may inflate to."""
_HEAD = struct.Struct(">BcI")


def read(payload: bytes) -> tuple[str, dict[str, Any], bytes]:
    """(``"m"`` or ``"r"``, the body's fields, the float32 vector's bytes) of a format-1
    payload; ValueError (or struct.error, zlib.error) when it is not one."""
    _version, kind, size = _HEAD.unpack_from(payload)
    data = payload[_HEAD.size : _HEAD.size + size]
    if kind.isupper():
        inflater = zlib.decompressobj()
        data = inflater.decompress(data, MAX_BODY)
        if inflater.unconsumed_tail:
            raise ValueError(f"a payload's text inflates past {MAX_BODY} bytes")
    try:
        body = json.loads(data)
    except RecursionError as exc:  # nesting past the interpreter's stack
        raise ValueError("a payload's text nests too deeply") from exc
    if not isinstance(body, dict):
        raise ValueError("a payload's text is not a JSON object")
    kind = kind.lower()
    vector = payload[_HEAD.size + size :] if kind == b"m" else b""
    if len(vector) % 4:
        raise ValueError("a memory's vector is not whole float32 values")
    return kind.decode("latin-1"), body, vector
