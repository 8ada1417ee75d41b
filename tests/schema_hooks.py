"""What the schema fuzz tests of both HTTP APIs share: a hook that keeps the fuzzer to negative
requests that are still negative on the wire.

A query string carries text only. When schemathesis means a boolean or a number as the wrong
type for a text parameter, or a bare string where the schema says a list, the server receives
text (``tag=false``, ``tag=5.38e+16``), which may be a perfectly valid tag, and the "negative
data accepted" check fails on a request the server read correctly. Such a case is not sent;
one whose text really breaks the parameter's rules (a pattern, a length) still is.
"""

from __future__ import annotations

import re
from typing import Any


def _options(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return list(schema["anyOf"]) if "anyOf" in schema else [schema]


def _textual(schema: dict[str, Any]) -> bool:
    """Whether a parameter's schema admits only text (or lists of text, or null)."""
    for option in _options(schema):
        kind = option.get("type")
        if kind == "array":
            if not _textual(option.get("items", {})):
                return False
        elif kind not in ("string", "null"):
            return False
    return True


def _text_ok(schema: dict[str, Any], text: str) -> bool:
    pattern = schema.get("pattern")
    return (pattern is None or re.search(pattern, text) is not None) and len(text) <= schema.get(
        "maxLength", len(text)
    )


def _valid_on_the_wire(schema: dict[str, Any], value: Any) -> bool:
    """Whether the text a query carries for ``value`` is valid for the parameter (a bare text
    where a list is expected is a list of one on the wire)."""
    if value is None:
        return True  # left out of the query string
    texts = value if isinstance(value, list) else [value]
    if not all(isinstance(text, str) for text in texts):
        return False
    for option in _options(schema):
        kind = option.get("type")
        if kind == "string" and not isinstance(value, list) and _text_ok(option, value):
            return True
        if kind == "array" and len(texts) <= option.get("maxItems", len(texts)):
            if all(_text_ok(option.get("items", {}), text) for text in texts):
                return True
    return False


def filter_case(ctx: Any, case: Any) -> bool:
    """schemathesis hook (generated and coverage cases alike): refuse a negative case whose
    every violation lies in text query parameters that are valid once written as text."""
    if not case.query:
        return True
    schemas = {p.name: p.definition.get("schema", {}) for p in case.operation.query}
    textual = {name for name, schema in schemas.items() if _textual(schema)}
    for name, value in case.query.items():
        values = value if isinstance(value, list) else [value]
        if name in textual and any(v is not None and not isinstance(v, str) for v in values):
            return False  # a non-text value in a text parameter: it would arrive as text
    data = getattr(getattr(case.meta, "phase", None), "data", None)
    mutations = getattr(data, "mutations", ()) or ()
    names = {m.path[0] for m in mutations if getattr(m, "path", None)}
    if not names and getattr(data, "parameter", None):
        names = {data.parameter}
    location = getattr(getattr(data, "parameter_location", None), "value", None)
    if not names or location != "query" or not names <= textual:
        return True
    return not all(_valid_on_the_wire(schemas[name], case.query.get(name)) for name in names)
