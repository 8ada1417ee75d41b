"""The memory shapes both HTTP edges take and answer, as pydantic models for their OpenAPI.

The local API and the sync server's hosted routes share these bodies and answers, so a client
of one speaks the other. Request models forbid unknown fields (a misspelt ``tag`` for ``tags``
is an error, not silently ignored) and publish the rules on values that ``cairn.model`` applies
(its patterns), so the document says what the service takes; the service applies them again, so
every edge enforces the same ones. Content's 64 KiB are UTF-8 bytes, which a schema cannot
count: over them is 413. Response models mirror the ``to_dict`` methods of ``cairn.model``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field

from cairn.memory_rules import MAX_LIMIT
from cairn.model import (
    CONTENT_INPUT,
    KIND_INPUT,
    MAX_TAGS,
    PROJECT_INPUT,
    TAG_INPUT,
    TIME_INPUT,
    TOPIC_KEY_INPUT,
)


def optional(pattern: str) -> str:
    """``pattern`` (anchored) or the empty string, which means "the default" or "no filter"."""
    return f"^(?:{pattern[1:-1]})?$"


Kind = Annotated[str, Field(pattern=KIND_INPUT)]
Tag = Annotated[str, Field(pattern=TAG_INPUT)]
Text = Annotated[str, Field(pattern=CONTENT_INPUT)]
ProjectFilter = Annotated[
    str | None, Query(pattern=optional(PROJECT_INPUT), description="Only this project.")
]
KindsFilter = Annotated[list[Kind] | None, Query(description="Only these kinds.")]
TagsFilter = Annotated[
    list[Tag] | None, Query(max_length=MAX_TAGS, description="Only with all these tags.")
]
SinceFilter = Annotated[
    str | None,
    Query(pattern=optional(TIME_INPUT), description="Created at or after (ISO or 7d)."),
]
UntilFilter = Annotated[
    str | None, Query(pattern=optional(TIME_INPUT), description="Created before (ISO or 7d).")
]

_TIME = "an ISO-8601 date or time (UTC if no zone), or an age such as 30m, 12h, 7d, 2w"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RememberRequest(_Request):
    content: str = Field(
        json_schema_extra={"pattern": CONTENT_INPUT},  # applied by the service: content_empty
        description="The text to remember (at most 64 KiB of UTF-8).",
        examples=["We deploy with blue-green releases behind the load balancer"],
    )
    kind: str | None = Field(
        None,
        pattern=KIND_INPUT,
        description="decision, fact, preference, note (default when left out), gotcha, ...",
        examples=["decision"],
    )
    project: str | None = Field(
        None,
        pattern=optional(PROJECT_INPUT),
        description="The project it belongs to; default: the server's default project.",
    )
    tags: list[Tag] = Field(
        default_factory=list, max_length=MAX_TAGS, description="Tags, e.g. deploy or infra."
    )
    topic_key: str | None = Field(
        None,
        pattern=TOPIC_KEY_INPUT,
        description="A later memory with the same project and topic_key supersedes this one.",
    )


class EditRequest(_Request):
    """At least one change: a field left out keeps its value (none of them takes null)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    content: str = Field(
        None,  # type: ignore[assignment]  # left out: kept (the schema offers no null)
        json_schema_extra={"pattern": CONTENT_INPUT},  # applied by the service: content_empty
        description="The corrected text (embedded again); leave it out to keep the current one.",
    )
    kind: str = Field(
        None,  # type: ignore[assignment]
        pattern=KIND_INPUT,
        description="A new kind; leave it out to keep the current one.",
    )
    add_tags: list[Tag] = Field(
        default_factory=list,
        min_length=1,
        max_length=MAX_TAGS,
        description="Tags to add. Tags only grow (sync merges them as a set), so none is removed.",
    )


class RecallRequest(_Request):
    query: str = Field(
        json_schema_extra={"pattern": CONTENT_INPUT},  # applied by the service
        description="What you are looking for, in words.",
        examples=["how do we ship to production?"],
    )
    project: str | None = Field(
        None,
        pattern=optional(PROJECT_INPUT),
        description="Only this project; default: every project.",
    )
    kinds: list[Kind] = Field(default_factory=list, description="Only these kinds.")
    tags: list[Tag] = Field(
        default_factory=list, max_length=MAX_TAGS, description="Only memories with all these tags."
    )
    since: str | None = Field(
        None,
        pattern=optional(TIME_INPUT),
        description=f"Only memories created at or after: {_TIME}.",
    )
    until: str | None = Field(
        None, pattern=optional(TIME_INPUT), description=f"Only memories created before: {_TIME}."
    )
    limit: int = Field(10, ge=1, le=MAX_LIMIT, description="How many results at most.")


class MemoryOut(BaseModel):
    id: str = Field(description="UUIDv7; any unique prefix of 8+ characters also finds it.")
    content: str
    kind: str
    project: str
    tags: list[str]
    topic_key: str | None
    source: str = Field(description="The device or agent that wrote it.")
    created_at: str = Field(description="ISO-8601, UTC.")
    updated_at: str = Field(description="ISO-8601, UTC.")
    deleted: bool = Field(description="True for a tombstone: content and tags are erased.")
    content_hash: str
    model_id: str | None = Field(description="The embedding model that made its vector.")
    hlc: str


class SimilarOut(BaseModel):
    id: str
    similarity: float = Field(description="Cosine similarity to the new memory.")


class RememberOut(MemoryOut):
    created: bool = Field(description="False when an identical memory already existed.")
    supersedes: str | None = Field(description="The id of the memory this one superseded.")
    near_duplicates: list[SimilarOut] = Field(
        description="Existing memories so similar that this one may repeat them (not merged)."
    )


class MatchOut(BaseModel):
    semantic_rank: int | None
    cosine: float | None
    keyword_rank: int | None
    bm25: float | None
    superseded_by: str | None


class HitOut(MemoryOut):
    score: float = Field(description="Fused rank score; only the order matters.")
    why: str = Field(description="Why it matched, e.g. 'semantic #1 (cosine 0.71)'.")
    match: MatchOut


class RecallOut(BaseModel):
    results: list[HitOut] = Field(description="Best first.")


class ListOut(BaseModel):
    memories: list[MemoryOut] = Field(description="Newest first.")
    total: int = Field(description="How many live memories match the filters, over all pages.")


class HealthOut(BaseModel):
    status: Literal["ok"]
    version: str
