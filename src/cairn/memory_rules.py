"""The memory rules a device and a hosted workspace share. What a new memory must be, and how it
relates to those already stored (exact duplicates, near-duplicates, topic chains).

Plain functions over ``cairn.model`` values (no I/O): ``cairn.device_store.Store`` and
``cairn.server.hosted.Hosted`` each read what a rule needs from their own storage and call it,
so a memory remembered on a device and one remembered through the server obey the same rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from cairn import model
from cairn.errors import InvalidInput, NotFound
from cairn.ids import uuid7
from cairn.model import Memory, Similar

MAX_LIMIT = 1000
"""The most memories one recall or one page of a listing returns."""
MAX_OFFSET = 1_000_000_000
"""The furthest a listing may page."""
NEAR_DUPLICATE = 0.92
"""Cosine from which remembering reports an existing memory as a near-duplicate."""
NEAR_CANDIDATES = 10
"""How many of the nearest memories remembering looks among for near-duplicates."""
MIN_PREFIX = 8
"""Characters an id prefix needs to find a memory (fewer would match too many by chance)."""


@dataclass(frozen=True)
class NewMemory:
    """A memory to remember: everything but what the store assigns."""

    content: str
    kind: str = model.DEFAULT_KIND
    project: str | None = None
    tags: Sequence[str] = ()
    topic_key: str | None = None
    id: str | None = None
    created_at: int | None = None


def checked(item: NewMemory, project: str) -> NewMemory:
    """``item`` checked and normalised, in ``project`` unless it names its own."""
    return NewMemory(
        content=model.check_content(item.content),
        kind=model.check_kind(item.kind),  # an empty kind is a mistake, not a note
        project=model.check_project(item.project or project),
        tags=model.check_tags(item.tags),
        topic_key=model.check_topic_key(item.topic_key),
        id=item.id,
        created_at=item.created_at,
    )


def check_limit(limit: int) -> None:
    """InvalidInput unless a recall's ``limit`` is within bounds."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}")


def check_page(limit: int, offset: int) -> None:
    """InvalidInput unless a listing's page is within bounds."""
    if not 1 <= limit <= MAX_LIMIT or not 0 <= offset <= MAX_OFFSET:
        raise InvalidInput(
            f"limit must be between 1 and {MAX_LIMIT}, offset between 0 and {MAX_OFFSET}"
        )


def new_memory(
    item: NewMemory,
    source: str,
    now: int,
    created_at: int,
    model_id: str | None,
    hlc: str = "",
    digest: str | None = None,
) -> Memory:
    """The memory that remembering a checked ``item`` creates (its id is new unless given);
    ``digest``, its content hash when the caller has it already."""
    assert item.project is not None  # set by checked()
    return Memory(
        id=item.id or uuid7(now),
        content=item.content,
        kind=item.kind,
        project=item.project,
        tags=tuple(item.tags),
        topic_key=item.topic_key,
        source=source,
        created_at=created_at,
        updated_at=now,
        deleted=False,
        content_hash=digest or model.content_hash(item.content),
        model_id=model_id,
        hlc=hlc,
    )


def merged_tags(held: Sequence[str], added: Iterable[str]) -> tuple[str, ...] | None:
    """The tags of a memory once ``added`` join them, sorted; None when it holds them all.

    Remembering a text its project already holds returns that memory instead of a new one
    (an exact duplicate), with the new memory's tags merged in; tags only grow.
    """
    new = set(added)
    if new <= set(held):
        return None
    return tuple(sorted({*held, *new}))


def checked_edit(
    content: str | None, kind: str | None, tags: Sequence[str], settles: Sequence[str] = ()
) -> tuple[str | None, str | None, tuple[str, ...]]:
    """An edit's new content, new kind and tags to add, checked; InvalidInput when the edit
    changes nothing (``settles``, conflict versions it resolves, is a change on a device)."""
    if content is None and kind is None and not settles and not tags:
        raise InvalidInput("nothing to change; give new content, a kind and/or tags to add")
    text = model.check_content(content) if content is not None else None
    return text, model.check_kind(kind) if kind is not None else None, model.check_tags(tags)


def check_distinct(memory_id: str, same: Memory | None) -> None:
    """InvalidInput when ``same``, a live memory of the project holding the text that memory
    ``memory_id`` is edited to say, is another memory: two memories never say the same."""
    if same is not None and same.id != memory_id:
        raise InvalidInput(
            f"memory {same.id} already says exactly this; forget one of them instead"
        )


def near_duplicates(
    item: NewMemory, nearest: Iterable[tuple[Memory, float]], threshold: float = NEAR_DUPLICATE
) -> tuple[Similar, ...]:
    """The near-duplicates of a checked ``item`` among its nearest memories (each with its
    cosine, nearest first): those of its project, with other text, at ``threshold`` or closer.

    They are reported, not merged: only an identical text is the same memory.
    """
    digest = model.content_hash(item.content)
    return tuple(
        Similar(memory.id, cosine)
        for memory, cosine in nearest
        if cosine >= threshold and memory.project == item.project and memory.content_hash != digest
    )


def topic_created_at(now: int, newest: Memory | None) -> int:
    """When a new memory of a topic is created: ``now``, or just after the topic's ``newest``
    memory when that one is as new (another device's clock may run ahead).

    A topic chain orders its memories by creation, so this makes the new memory supersede the
    topic's newest, as whoever remembers it means it to.
    """
    return max(now, newest.created_at + 1) if newest is not None else now


def resolve(
    memory_id: str,
    by_id: Callable[[str], Memory | None],
    with_prefix: Callable[[str], Sequence[str]],
    allow_deleted: bool = False,
) -> Memory:
    """A memory by id or by a unique id prefix of ``MIN_PREFIX`` or more characters; NotFound
    when none has it (or it was forgotten, unless ``allow_deleted``). ``by_id`` reads one
    memory; ``with_prefix`` gives up to two ids that start with a prefix."""
    memory_id = memory_id.strip()
    memory = by_id(memory_id)
    if memory is None and len(memory_id) >= MIN_PREFIX:
        matches = with_prefix(memory_id)
        if len(matches) > 1:
            raise InvalidInput(f"{memory_id!r} matches several memories; give more of the id")
        if matches:
            memory = by_id(matches[0])
    if memory is None:
        short = (
            f" (a prefix needs at least {MIN_PREFIX} characters)"
            if len(memory_id) < MIN_PREFIX
            else ""
        )
        raise NotFound(f"no memory has the id {memory_id!r}{short}; `cairn list` shows the ids")
    if memory.deleted and not allow_deleted:
        raise NotFound(f"memory {memory.id} was forgotten")
    return memory
