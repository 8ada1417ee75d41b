"""Export and import of memories as JSON Lines, embeddings included.

Each line is one JSON object. The first is a header; then one line per live memory (with its
vector as base64 little-endian float32, so an import with the same model does not re-embed); then
one line per relation::

    {"record": "header", "format": "cairn-jsonl", "version": 1, "model_id": "..."}
    {"record": "memory", "id": "...", "content": "...", "kind": "fact", "project": "...",
     "tags": [...], "topic_key": null, "created_at": "2026-...Z", "model_id": "...",
     "embedding": "base64..."}
    {"record": "relation", "from_id": "...", "to_id": "...", "type": "supersedes"}

Import validates every line, reports bad ones by number and applies none of a bad line;
re-importing a file changes nothing (known ids are skipped).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from cairn import model
from cairn.device_store import Store
from cairn.errors import CairnError, ImportFormatError
from cairn.ids import uuid7
from cairn.memory_rules import NewMemory
from cairn.model import Filters

FORMAT = "cairn-jsonl"
VERSION = 1
BATCH = 8192
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
"""An id as ``str(uuid.UUID(...))`` writes it (most are): kept as it is, without parsing."""


@dataclass
class ImportReport:
    lines: int = 0
    imported: int = 0
    unchanged: int = 0
    duplicates: int = 0
    relations: int = 0
    embedded: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    created_ids: set[str] = field(default_factory=set)
    """The memories this import made (a relation between them is new, whoever linked it)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "imported": self.imported,
            "unchanged": self.unchanged,
            "duplicates": self.duplicates,
            "relations": self.relations,
            "embedded": self.embedded,
            "errors": [{"line": n, "message": m} for n, m in self.errors],
        }


def export(
    store: Store,
    out: TextIO,
    filters: Filters | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write the header, every live memory matching ``filters`` and their relations."""
    header = {
        "record": "header",
        "format": FORMAT,
        "version": VERSION,
        "model_id": store.embedder.model_id,
    }
    out.write(json.dumps(header) + "\n")
    written: set[str] = set()
    for memory, model_id, vector in store.iter_with_vectors(filters):
        record: dict[str, Any] = {"record": "memory", **memory.to_dict()}
        for key in ("deleted", "hlc", "updated_at", "content_hash"):
            record.pop(key)
        record["model_id"] = model_id
        record["embedding"] = base64.b64encode(vector).decode("ascii") if vector else None
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        written.add(memory.id)
        if progress:
            progress(1)
    for relation in store.all_relations():
        if relation.from_id in written and relation.to_id in written:
            out.write(json.dumps({"record": "relation", **relation.to_dict()}) + "\n")
    return len(written)


def import_(
    store: Store,
    lines: Iterable[str],
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import memories and relations from JSON Lines; see the module docstring.

    ``progress(n)`` counts lines done, whatever they hold, so it ends at the file's line count.
    """
    report = ImportReport()
    batch: list[tuple[int, NewMemory, np.ndarray | None]] = []
    relations: list[tuple[int, dict[str, Any]]] = []
    seen_ids: dict[str, int] = {}
    done = progress or (lambda _n: None)
    for number, line in enumerate(lines, 1):
        report.lines = number
        if not line.strip():
            done(1)
            continue
        try:
            record = _parse(line, store)
        except CairnError as exc:
            report.errors.append((number, exc.message))
            done(1)
            continue
        if record is None:  # the header
            done(1)
            continue
        if isinstance(record, dict):
            relations.append((number, record))
            continue
        item, vector = record
        assert item.id is not None
        if item.id in seen_ids:
            report.errors.append(
                (number, f"id {item.id} already appears on line {seen_ids[item.id]}")
            )
            done(1)
            continue
        seen_ids[item.id] = number
        batch.append((number, item, vector))
        if len(batch) >= BATCH:
            _flush(store, batch, report, progress)
            batch = []
    _flush(store, batch, report, progress)
    for number, rel in relations:
        _relate(store, number, rel, report)
        done(1)
    return report


def _parse(line: str, store: Store) -> tuple[NewMemory, np.ndarray | None] | dict[str, Any] | None:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ImportFormatError(f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
    except ValueError as exc:  # an integer past int()'s 4300 digits
        raise ImportFormatError(f"not valid JSON ({exc!s:.80})") from exc
    except RecursionError as exc:
        raise ImportFormatError("not valid JSON (it nests too deeply)") from exc
    if not isinstance(data, dict):
        raise ImportFormatError("each line must be a JSON object")
    kind_of_record = data.get("record", "memory")
    if kind_of_record == "header":
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ImportFormatError(f"unknown header; this Cairn reads {FORMAT} version {VERSION}")
        return None
    if kind_of_record == "relation":
        for key in ("from_id", "to_id", "type"):
            if not model.is_text(data.get(key)):
                raise ImportFormatError(f"a relation needs a string {key!r} of UTF-8 text")
        model.check_relation_type(data["type"])
        return data
    if kind_of_record != "memory":
        raise ImportFormatError(f"unknown record type {kind_of_record!r}")
    content = data.get("content")
    if not model.is_text(content):
        raise ImportFormatError("a memory needs a string 'content' of UTF-8 text")
    tags = data.get("tags") or []
    if not isinstance(tags, list) or not all(model.is_text(t) for t in tags):
        raise ImportFormatError("'tags' must be a list of strings")
    for key in ("kind", "project", "topic_key", "id", "model_id", "embedding"):
        if data.get(key) is not None and not model.is_text(data[key]):
            raise ImportFormatError(f"{key!r} must be a string of UTF-8 text")
    created = data.get("created_at")
    if created is not None and not (model.is_text(created) or type(created) is int):
        raise ImportFormatError("'created_at' must be an ISO date or Unix milliseconds")
    memory_id = data.get("id") or None
    if memory_id is not None and not _CANONICAL_UUID.fullmatch(memory_id):
        try:
            memory_id = str(uuid.UUID(str(memory_id)))
        except ValueError as exc:
            raise ImportFormatError(f"'id' {memory_id!r} is not a UUID") from exc
    created_ms = (
        created if isinstance(created, int) else model.parse_time(created) if created else None
    )
    if created_ms is not None and not model.MIN_MS <= created_ms <= model.MAX_MS:
        raise ImportFormatError("'created_at' is not a time between the years 1 and 9999")
    item = NewMemory(
        content=model.check_content(content),
        kind=model.check_kind(str(data.get("kind") or model.DEFAULT_KIND)),
        project=model.check_project(str(data.get("project") or store.project)),
        tags=model.check_tags(tags),
        topic_key=model.check_topic_key(data.get("topic_key")),
        id=memory_id or uuid7(),
        created_at=created_ms,
    )
    vector = None
    embedding = data.get("embedding")
    if embedding and data.get("model_id") == store.embedder.model_id:
        try:
            raw = base64.b64decode(embedding, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ImportFormatError("'embedding' is not valid base64") from exc
        if len(raw) != store.embedder.dim * 4:
            raise ImportFormatError(
                f"'embedding' has {len(raw) // 4} dimensions; the model has {store.embedder.dim}"
            )
        vector = np.frombuffer(raw, dtype="<f4")
    return item, vector


def _flush(
    store: Store,
    batch: list[tuple[int, NewMemory, np.ndarray | None]],
    report: ImportReport,
    progress: Callable[[int], None] | None,
) -> None:
    if not batch:
        return
    known = store.known_ids([item.id for _n, item, _v in batch if item.id])
    fresh = [(n, item, v) for n, item, v in batch if item.id not in known]
    report.unchanged += len(batch) - len(fresh)
    missing = [i for i, (_n, _item, v) in enumerate(fresh) if v is None]
    vectors = np.zeros((len(fresh), store.embedder.dim), dtype=np.float32)
    for i, (_n, _item, v) in enumerate(fresh):
        if v is not None:
            vectors[i] = v
    if progress:
        progress(len(batch) - len(missing))
    if missing:
        texts = [fresh[i][1].content for i in missing]
        vectors[missing] = store.embedder.embed(texts, progress)
        report.embedded += len(missing)
    results = store.remember_embedded([item for _n, item, _v in fresh], vectors)
    for result in results:
        if result.created:
            report.imported += 1
            report.created_ids.add(result.memory.id)
        else:
            report.duplicates += 1


def _relate(store: Store, number: int, rel: dict[str, Any], report: ImportReport) -> None:
    if store.has_relation(rel["from_id"], rel["to_id"], rel["type"]):
        # Linked already by this import (a topic chain of memories it made), or from before.
        new = report.created_ids & {rel["from_id"], rel["to_id"]}
        if new:
            report.relations += 1
        else:
            report.unchanged += 1
        return
    try:
        store.relate(rel["from_id"], rel["to_id"], rel["type"])
    except CairnError as exc:
        report.errors.append((number, exc.message))
        return
    report.relations += 1
