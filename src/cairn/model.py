"""Plain data types of Cairn and the rules that validate and normalise them (no I/O)."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard

from cairn.errors import ContentEmpty, ContentTooLarge, InvalidInput

KINDS = ("decision", "fact", "preference", "note", "gotcha", "file_chunk", "session_summary")
"""The well-known kinds; the set is open, so any name matching ``KIND_PATTERN`` is accepted."""
RELATION_TYPES = ("supersedes", "relates_to", "contradicts", "duplicate_of")
DEFAULT_KIND = "note"
DEFAULT_PROJECT = "default"
MAX_CONTENT_BYTES = 64 * 1024
MAX_TAGS = 32
MAX_INT = 2**53 - 1
"""The largest integer a request may carry: well inside what the stores hold (SQLite INTEGER and
PostgreSQL bigint are signed 64 bits), so none overflows a query, and the largest that a JSON
reader working in doubles keeps exact, so a documented maximum means one value to every
schema validator (2**63 - 1 and 2**63 + 191 are the same double)."""
EARLIEST_MS = int(datetime(1, 1, 1, tzinfo=UTC).timestamp() * 1000)
"""The earliest time an ISO date can name (year 1); an age may not reach further back."""

# The rules on values, as patterns that Python, pydantic (Rust) and JSON Schema (ECMA) read the
# same way, so the HTTP APIs publish them as they are: character classes are spelled out (each
# engine has its own \s), and what ``str.strip()`` removes (SPACE) may surround a value.
SPACE = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
"""The characters ``str.isspace()`` calls white space, as a character class body."""
CONTROL = r"\x00-\x1f\x7f-\x9f"
KIND_INPUT = rf"^[{SPACE}]*[A-Za-z][A-Za-z0-9_]{{0,31}}[{SPACE}]*$"
"""A kind: a word of ASCII letters, digits and _ (lowercased), 1-32 characters."""
TAG_INPUT = rf"^[{SPACE}]*[^{SPACE}{CONTROL},]{{1,64}}[{SPACE}]*$"
"""A tag: 1-64 characters, none of them white space, control or comma (lowercased)."""
PROJECT_INPUT = (
    rf"^[{SPACE}]*[^{SPACE}{CONTROL}](?:[^{CONTROL}]{{0,126}}[^{SPACE}{CONTROL}])?[{SPACE}]*$"
)
"""A project: 1-128 characters once trimmed, no control characters."""
TOPIC_KEY_INPUT = rf"^[^{CONTROL}]{{0,256}}$"
"""A topic key: at most 256 characters, no control characters (blank: none)."""
CONTENT_INPUT = rf"^[^\x00]*[^{SPACE}\x00][^\x00]*$"
"""Content: more than white space, and no NUL (PostgreSQL text cannot hold one)."""
# An age no longer than about 1,900 years, so that it never reaches back past the year 1.
_AGE_INPUT = r"(?:[0-9]{1,9} ?[sm]|[0-9]{1,7} ?h|[0-9]{1,5} ?[dw])"
_YEAR = r"(?:[0-9]{3}[1-9]|[0-9]{2}[1-9]0|[0-9][1-9]00|[1-9]000)"  # 0001 to 9999
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_DATE = (
    rf"(?:{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    rf"|{_LEAP_YEAR}-02-29)"
)
TIME_INPUT = (
    rf"^(?:{_AGE_INPUT}|{_DATE}"
    r"(?:T(?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,6})?)?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?)?)$"
)
"""What a time filter looks like: an age (30m, 12h, 7d, 2w; at most 9 digits of seconds or
minutes, 7 of hours, 5 of days or weeks) or an ISO date or time on the calendar (no February
30, no 29th of February outside a leap year, no year 0)."""
_KIND = re.compile(KIND_INPUT)
KIND_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}", re.ASCII)
"""A kind as it is stored (lowercased and trimmed from what ``KIND_INPUT`` takes)."""
_TAG = re.compile(TAG_INPUT)
_PROJECT = re.compile(PROJECT_INPUT)
_TOPIC_KEY = re.compile(TOPIC_KEY_INPUT)
_AGE = re.compile(r"([0-9]{1,9})\s*([smhdw])", re.ASCII)
_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class Memory:
    """One remembered piece of knowledge. Times are Unix milliseconds (UTC)."""

    id: str
    content: str
    kind: str
    project: str
    tags: tuple[str, ...]
    topic_key: str | None
    source: str
    created_at: int
    updated_at: int
    deleted: bool
    content_hash: str
    model_id: str | None
    hlc: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "content": self.content,
            "kind": self.kind,
            "project": self.project,
            "tags": list(self.tags),
            "topic_key": self.topic_key,
            "source": self.source,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "deleted": self.deleted,
            "content_hash": self.content_hash,
            "model_id": self.model_id,
            "hlc": self.hlc,
        }


_RELATION_PHRASES = {
    "supersedes": ("supersedes", "superseded by"),
    "relates_to": ("relates to", "related from"),
    "contradicts": ("contradicts", "contradicted by"),
    "duplicate_of": ("duplicate of", "duplicated by"),
}
"""A relation's phrase seen from its ``from`` end and from its ``to`` end."""


@dataclass(frozen=True)
class Relation:
    from_id: str
    to_id: str
    type: str
    created_at: int

    def seen_from(self, memory_id: str) -> tuple[str, str]:
        """How this relation reads from one of its ends: ``(phrase, other id)``, e.g.
        ``("superseded by", newer)`` seen from the older memory of a topic."""
        if self.from_id == memory_id:
            return _RELATION_PHRASES.get(self.type, (self.type, ""))[0], self.to_id
        return _RELATION_PHRASES.get(self.type, ("", f"{self.type} (from)"))[1], self.from_id

    def to_dict(self) -> dict[str, Any]:
        return {
            "from_id": self.from_id,
            "to_id": self.to_id,
            "type": self.type,
            "created_at": iso(self.created_at),
        }


@dataclass(frozen=True)
class Match:
    """Why a memory matched a query: its rank and raw score on each side of hybrid search."""

    semantic_rank: int | None = None
    cosine: float | None = None
    keyword_rank: int | None = None
    bm25: float | None = None
    superseded_by: str | None = None

    def explain(self) -> str:
        parts = []
        if self.semantic_rank is not None and self.cosine is not None:
            parts.append(f"semantic #{self.semantic_rank} (cosine {self.cosine:.2f})")
        if self.keyword_rank is not None and self.bm25 is not None:
            parts.append(f"keyword #{self.keyword_rank} (bm25 {self.bm25:.3g})")
        if self.superseded_by:
            parts.append(f"superseded by {self.superseded_by}")
        return "; ".join(parts)


@dataclass(frozen=True)
class Hit:
    memory: Memory
    score: float
    match: Match

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.memory.to_dict(),
            "score": round(self.score, 6),
            "why": self.match.explain(),
            "match": {
                "semantic_rank": self.match.semantic_rank,
                "cosine": None if self.match.cosine is None else round(self.match.cosine, 4),
                "keyword_rank": self.match.keyword_rank,
                "bm25": None if self.match.bm25 is None else round(self.match.bm25, 4),
                "superseded_by": self.match.superseded_by,
            },
        }


@dataclass(frozen=True)
class Similar:
    """A near-duplicate found when remembering: an existing memory with a high cosine."""

    id: str
    similarity: float


@dataclass(frozen=True)
class RememberResult:
    """What remembering did: created a memory, or returned an existing identical one."""

    memory: Memory
    created: bool
    supersedes: str | None = None
    near_duplicates: tuple[Similar, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.memory.to_dict(),
            "created": self.created,
            "supersedes": self.supersedes,
            "near_duplicates": [
                {"id": s.id, "similarity": round(s.similarity, 4)} for s in self.near_duplicates
            ],
        }


@dataclass(frozen=True)
class Filters:
    """Restrictions on recall and list. ``tags`` must all be present on a memory."""

    project: str | None = None
    kinds: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    since_ms: int | None = None
    until_ms: int | None = None

    @classmethod
    def parse(
        cls,
        project: str | None = None,
        kinds: Iterable[str] = (),
        tags: Iterable[str] = (),
        since: str | None = None,
        until: str | None = None,
    ) -> Filters:
        """Filters from user input, checked and normalised like stored values."""
        return cls(
            project=check_project(project) if project else None,
            kinds=tuple(dict.fromkeys(check_kind(k) for k in kinds)),
            tags=check_tags(tags),
            since_ms=parse_time(since) if since else None,
            until_ms=parse_time(until) if until else None,
        )

    @property
    def empty(self) -> bool:
        return (
            self.project is None
            and not self.kinds
            and not self.tags
            and self.since_ms is None
            and self.until_ms is None
        )


MIN_MS = -62_135_596_800_000
"""0001-01-01T00:00:00Z in Unix ms: the earliest time ``iso`` can show."""
MAX_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z in Unix ms: the latest (a read time outside them is refused)."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def iso(ms: int) -> str:
    # Integer arithmetic: ``fromtimestamp(ms / 1000)`` went through a float and showed
    # 9999-12-31T23:59:59.999 as .998.
    return (_EPOCH + ms * _MS).isoformat(timespec="milliseconds")


def parse_time(text: str) -> int:
    """Unix ms from an ISO-8601 date/time (UTC if no zone) or a relative age like ``7d``."""
    hint = f"cannot read the time {text!r}; use an ISO date like 2026-01-31 or an age like 7d"
    rel = _AGE.fullmatch(text.strip())
    if rel:
        seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[rel.group(2)]
        since = int(datetime.now(tz=UTC).timestamp() * 1000) - int(rel.group(1)) * seconds * 1000
        if since < EARLIEST_MS:
            raise InvalidInput(f"the age {text!r} reaches back past the year 1; use a shorter one")
        return since
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise InvalidInput(hint) from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    # Exactly, in integers: ``int(value.timestamp() * 1000)`` read 00:00:02.018 as 2017 ms, so
    # each export and import moved a memory's time back a millisecond.
    return (value - _EPOCH) // _MS


def is_text(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a string the store can hold. JSON's ``"\\ud800"`` escapes and a
    file's bytes that are not UTF-8 (read with ``surrogateescape``) leave lone surrogates in a
    Python string, which UTF-8 and SQLite cannot take."""
    if not isinstance(value, str):
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def normalise_content(content: str) -> str:
    """The form that identity is judged on: NFC, trimmed, runs of white space folded."""
    return _WS.sub(" ", unicodedata.normalize("NFC", content)).strip()


def content_hash(content: str) -> str:
    return hashlib.sha256(normalise_content(content).encode("utf-8")).hexdigest()


def check_content(content: str, max_bytes: int = MAX_CONTENT_BYTES) -> str:
    if not isinstance(content, str) or not content.strip():
        raise ContentEmpty("the memory is empty; give it some text to remember")
    if "\x00" in content:
        raise InvalidInput("the memory holds a NUL character; remove it (text only)")
    size = len(content.encode("utf-8"))
    if size > max_bytes:
        raise ContentTooLarge(
            f"the memory is {size} bytes, over the limit of {max_bytes}; "
            "split it into smaller memories (or store it as several file_chunk memories)"
        )
    return content.strip()


def check_query(query: str) -> str:
    """A search query: more than white space, no NUL."""
    if not query or not query.strip():
        raise InvalidInput("the query is empty; say what you are looking for")
    if "\x00" in query:
        raise InvalidInput("the query holds a NUL character; remove it")
    return query


def check_kind(kind: str) -> str:
    if not _KIND.fullmatch(kind):
        raise InvalidInput(f"kind {kind!r} is not valid; use a word such as {', '.join(KINDS)}")
    return kind.strip().lower()


def check_project(project: str) -> str:
    if not _PROJECT.fullmatch(project):
        raise InvalidInput(
            "the project name must be 1 to 128 characters, without control characters"
        )
    return project.strip()


def check_tags(tags: Iterable[str]) -> tuple[str, ...]:
    given = list(tags)
    if len(given) > MAX_TAGS:
        raise InvalidInput(f"a memory takes at most {MAX_TAGS} tags")
    out: set[str] = set()
    for raw in given:
        if not _TAG.fullmatch(raw):
            raise InvalidInput(
                f"tag {raw!r} is not valid; tags are 1-64 characters with no spaces, commas "
                "or control characters"
            )
        out.add(raw.strip().lower())
    return tuple(sorted(out))


def check_topic_key(topic_key: str | None) -> str | None:
    if topic_key is None:
        return None
    if not _TOPIC_KEY.fullmatch(topic_key):
        raise InvalidInput("topic_key must be at most 256 characters, without control characters")
    return topic_key.strip() or None


def check_relation_type(type_: str) -> str:
    if type_ not in RELATION_TYPES:
        raise InvalidInput(
            f"relation type {type_!r} is not valid; use one of {', '.join(RELATION_TYPES)}"
        )
    return type_
