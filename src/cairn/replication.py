"""What replicas exchange and compare (plain types, no I/O).

Whole memory and relation states with their clocks, conflicts, mutations, and the
selective-sync rules."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from cairn.model import Memory, iso

CONTENT_CLOCK = "content"
"""The clock of a memory's content; content_hash, model_id and the vector change with it."""
CLOCKED_FIELDS = ("content", "kind", "project", "topic_key", "source", "created_at", "deleted")
"""The fields merged last-writer-wins by their own clock (tags merge as a set instead)."""


@dataclass(frozen=True)
class Revision:
    """A content version that lost to a concurrent edit: kept, listed, never dropped silently."""

    hlc: str
    content: str
    content_hash: str


@dataclass(frozen=True)
class MemoryState:
    """A memory's whole replicated state: what sync sends and merges.

    Each field in ``CLOCKED_FIELDS`` has a clock: ``field_hlc[field]`` if present, else
    ``created_hlc`` (kept sparse). ``ancestors`` are the clocks of every content version this one
    was written over; a content version that is neither current nor an ancestor is a conflict
    and travels in ``revisions`` until someone resolves it.
    """

    memory: Memory
    created_hlc: str
    field_hlc: dict[str, str]
    ancestors: tuple[str, ...]
    vector: bytes | None
    revisions: tuple[Revision, ...] = ()

    def clock(self, field_name: str) -> str:
        return self.field_hlc.get(field_name, self.created_hlc)

    @property
    def hlc(self) -> str:
        """The clock of the latest change to any field."""
        return max([self.created_hlc, *self.field_hlc.values(), self.memory.hlc])


@dataclass(frozen=True)
class RelationState:
    """A relation's replicated state: it exists unless its newest change deleted it."""

    from_id: str
    to_id: str
    type: str
    created_at: int
    deleted: bool
    hlc: str

    @property
    def key(self) -> str:
        return f"{self.from_id}|{self.type}|{self.to_id}"


@dataclass(frozen=True)
class Conflict:
    """A content version that lost to a concurrent edit, kept until the user resolves it:
    ``content`` written by ``device_id``, beside the ``current`` text ``current_device_id``
    wrote."""

    id: str
    memory_id: str
    hlc: str
    content: str
    current: str
    device_id: str
    created_at: int
    current_device_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "memory_id": self.memory_id,
            "revision_hlc": self.hlc,
            "revision": self.content,
            "current": self.current,
            "device_id": self.device_id,
            "current_device_id": self.current_device_id,
            "created_at": iso(self.created_at),
        }


@dataclass(frozen=True)
class Mutation:
    """An outbox entry: one local change to one entity, stamped with an HLC.

    A push sends the entity's whole state under the id of its newest pending entry.
    """

    mutation_id: str
    device_id: str
    hlc: str
    entity: str
    entity_id: str


@dataclass(frozen=True)
class SyncRules:
    """Selective sync: which memories leave this device and which are taken in.

    Empty include lists mean "all". ``file_chunk`` memories stay local unless ``file_chunks``.
    A memory needs one of ``include_tags`` (when given) and none of ``exclude_tags``.
    """

    include_projects: tuple[str, ...] = ()
    exclude_projects: tuple[str, ...] = ()
    include_kinds: tuple[str, ...] = ()
    exclude_kinds: tuple[str, ...] = ()
    include_tags: tuple[str, ...] = ()
    exclude_tags: tuple[str, ...] = ()
    file_chunks: bool = False

    def allows(self, memory: Memory) -> bool:
        if memory.kind == "file_chunk" and not self.file_chunks:
            return False
        if self.include_projects and memory.project not in self.include_projects:
            return False
        if memory.project in self.exclude_projects:
            return False
        if self.include_kinds and memory.kind not in self.include_kinds:
            return False
        if memory.kind in self.exclude_kinds:
            return False
        if memory.deleted:  # a tombstone has no tags left to judge; it may always travel
            return True
        if self.include_tags and not set(memory.tags) & set(self.include_tags):
            return False
        return not set(memory.tags) & set(self.exclude_tags)

    def fingerprint(self) -> str:
        """Changes whenever the rules do (a change re-sends and re-reads everything)."""
        text = repr(sorted(vars(self).items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]
