"""The verbs of Cairn (remember, recall, get, forget, list, relate, stats) over one store file.

This is what every edge calls: the CLI, the MCP server, the HTTP API and the Python API.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from cairn import model
from cairn.embedding.base import Embedder
from cairn.errors import InvalidInput, NotFound
from cairn.ids import uuid7
from cairn.model import Filters, Hit, Memory, Relation, RememberResult, Similar
from cairn.search import hybrid
from cairn.search.vector_index import VectorIndex
from cairn.store import clock, memories, relations
from cairn.store.clock import now_ms
from cairn.store.db import Database
from cairn.store.sync_state import SyncState

MAX_LIMIT = 1000
MAX_OFFSET = 1_000_000_000
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


class Store:
    """A Cairn store: one SQLite file, an embedder, and the in-memory vector index over it."""

    def __init__(
        self,
        db: Database,
        embedder: Embedder,
        project: str = model.DEFAULT_PROJECT,
        source: str = "cli",
        near_duplicate: float = 0.92,
    ) -> None:
        # OpenBLAS threads fight onnxruntime's pool on small machines; one BLAS thread is
        # fastest for the matrix-vector products of exact search.
        threadpool_limits(limits=1, user_api="blas")
        self.db = db
        self.embedder = embedder
        self.sync_state = SyncState(db, embedder)  # what the sync package reads and writes
        self.project = model.check_project(project)
        self.source = source
        self.near_duplicate = near_duplicate
        self._index: VectorIndex | None = None
        self._index_lock = threading.Lock()
        # Runs the keyword half of recall next to the semantic half (see search.hybrid).
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cairn-recall")

    def close(self) -> None:
        self._pool.shutdown()
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def warm_up(self) -> None:
        """Load the model and the vector index now rather than on the first request."""
        self.embedder.load()
        self.index.refresh()

    @property
    def index(self) -> VectorIndex:
        with self._index_lock:
            if self._index is None:
                self._index = VectorIndex(self.db, self.embedder.model_id, self.embedder.dim)
            return self._index

    def device_id(self) -> str:
        """This store's device id (made on first use)."""
        with self.db.write() as conn:
            return clock.device_id(conn)

    # --- writing ------------------------------------------------------------------------------

    def remember(
        self,
        content: str,
        kind: str = model.DEFAULT_KIND,
        project: str | None = None,
        tags: Sequence[str] = (),
        topic_key: str | None = None,
    ) -> RememberResult:
        """Remember one memory; identical content in the same project returns the existing one.

        A memory with the same project and ``topic_key`` as a live one supersedes it, and memories
        with a cosine of ``near_duplicate`` or more are reported (not merged).
        """
        item = self._validate(NewMemory(content, kind, project, tags, topic_key))
        assert item.project is not None  # set by _validate
        with self.db.read() as conn:  # an exact duplicate needs no embedding
            same = memories.live_by_hash(conn, item.project, model.content_hash(item.content))
        if same is not None:
            with self.db.write() as conn:  # only to add tags; checked again under the lock
                known = self._known(conn, item)
            if known is not None:
                return known
        vector = self.embedder.embed([item.content])[0]
        index = self.index
        index.refresh()
        # Near-duplicates are advisory: look among the nearest few overall, keep this project's.
        close = [(r, c) for r, c in index.search(vector, 10) if c >= self.near_duplicate]
        near: tuple[Similar, ...] = ()
        if close:
            digest = model.content_hash(item.content)
            with self.db.read() as conn:
                by_row = memories.by_rowids(conn, [r for r, _ in close])
            near = tuple(
                Similar(by_row[r].id, c)
                for r, c in close
                if r in by_row
                and by_row[r].project == item.project
                and by_row[r].content_hash != digest
            )
        result = self._write([item], np.asarray([vector]))[0]
        if not result.created:
            return result
        return RememberResult(result.memory, True, result.supersedes, near)

    def remember_many(
        self,
        items: Sequence[NewMemory],
        progress: Callable[[int], None] | None = None,
        window: int = 2048,
    ) -> list[RememberResult]:
        """Remember many memories: embedded in windows, one transaction per window.

        All items are validated before anything is written. Near-duplicates are not reported.
        ``progress(n)`` reports embedded memories. Large windows let the embedder batch texts
        of similar length (measured: 2000 texts embed 1.3x faster in one call than in 256s).
        """
        checked = [self._validate(item) for item in items]
        results: list[RememberResult] = []
        for start in range(0, len(checked), window):
            batch = checked[start : start + window]
            vectors = self.embedder.embed([m.content for m in batch], progress)
            results.extend(self._write(batch, vectors))
        return results

    def remember_embedded(
        self, items: Sequence[NewMemory], vectors: np.ndarray
    ) -> list[RememberResult]:
        """Remember memories whose vectors (of this store's model) were made elsewhere."""
        return self._write([self._validate(item) for item in items], vectors)

    def _validate(self, item: NewMemory) -> NewMemory:
        return NewMemory(
            content=model.check_content(item.content),
            kind=model.check_kind(item.kind),  # an empty kind is a mistake, not a note
            project=model.check_project(item.project or self.project),
            tags=model.check_tags(item.tags),
            topic_key=model.check_topic_key(item.topic_key),
            id=item.id,
            created_at=item.created_at,
        )

    def _write(self, items: Sequence[NewMemory], vectors: np.ndarray) -> list[RememberResult]:
        model_id = self.embedder.model_id
        results: list[RememberResult] = []
        with self.db.write() as conn:
            for item, vector in zip(items, vectors, strict=True):
                assert item.project is not None  # set by _validate
                known = self._known(conn, item)
                if known is not None:
                    results.append(known)
                    continue
                if item.id is not None and memories.get(conn, item.id) is not None:
                    raise InvalidInput(f"a memory with id {item.id} already exists")
                now = now_ms()
                memory = memories.insert(
                    conn,
                    Memory(
                        id=item.id or uuid7(now),
                        content=item.content,
                        kind=item.kind,
                        project=item.project,
                        tags=tuple(item.tags),
                        topic_key=item.topic_key,
                        source=self.source,
                        created_at=now if item.created_at is None else item.created_at,
                        updated_at=now,
                        deleted=False,
                        content_hash=model.content_hash(item.content),
                        model_id=model_id,
                        hlc="",
                    ),
                    vector,
                )
                superseded = relations.link_topic(conn, memory)
                results.append(RememberResult(memory, True, superseded))
        return results

    @staticmethod
    def _known(conn: sqlite3.Connection, item: NewMemory) -> RememberResult | None:
        """The live memory of the item's project with identical content, given its new tags."""
        assert item.project is not None  # set by _validate
        existing = memories.live_by_hash(conn, item.project, model.content_hash(item.content))
        if existing is None:
            return None
        return RememberResult(memories.add_tags(conn, existing, item.tags), created=False)

    def edit(
        self,
        memory_id: str,
        content: str | None = None,
        kind: str | None = None,
        settles: Sequence[str] = (),
        tags: Sequence[str] = (),
    ) -> Memory:
        """Change a memory's content (embedded again) and/or kind, and add ``tags``; the change
        syncs like any. Tags only grow (sync merges them as a set), so none can be removed.

        ``settles`` names conflict versions (by clock) that this edit resolves.
        """
        if content is None and kind is None and not settles and not tags:
            raise InvalidInput("nothing to change; give new content, a kind and/or tags to add")
        text = model.check_content(content) if content is not None else None
        kind = model.check_kind(kind) if kind is not None else None
        new_tags = model.check_tags(tags)
        with self.db.read() as conn:
            current = self._resolve(conn, memory_id)
        changes_text = text is not None and model.content_hash(text) != current.content_hash
        vector = self.embedder.embed([text])[0] if changes_text and text is not None else None
        with self.db.write() as conn:
            memory = self._resolve(conn, current.id)
            if changes_text and text is not None:
                same = memories.live_by_hash(conn, memory.project, model.content_hash(text))
                if same is not None and same.id != memory.id:
                    raise InvalidInput(
                        f"memory {same.id} already says exactly this; forget one of them instead"
                    )
            new_text = text if changes_text else (memory.content if settles else None)
            if vector is not None:
                memory = replace(memory, model_id=self.embedder.model_id)
            memory = memories.edit(
                conn,
                memory,
                content=new_text,
                vector=vector,
                kind=kind,
                settles=settles,
            )
            return memories.add_tags(conn, memory, new_tags) if new_tags else memory

    def forget(self, memory_id: str) -> Memory:
        """Tombstone a memory: its content, tags and vector are erased; the id stays known.
        Forgetting a forgotten memory changes nothing and returns its tombstone."""
        with self.db.write() as conn:
            memory = self._resolve(conn, memory_id, allow_deleted=True)
            return memory if memory.deleted else memories.tombstone(conn, memory)

    def rename_project(self, old: str, new: str) -> dict[str, Any]:
        """Move every live memory of project ``old`` to ``new``, each move a change that syncs.

        Topic chains of the two projects join by creation time, and a memory whose text the
        new project already holds collapses onto one (as sync does with duplicates).
        """
        old, new = model.check_project(old), model.check_project(new)
        if old == new:
            raise InvalidInput(f"the project is already called {new!r}")
        with self.db.write() as conn:
            moving = memories.live_in_project(conn, old)
            if not moving:
                raise NotFound(
                    f"no memory is in project {old!r}; `cairn project list` shows the projects"
                )
            moved = [memories.set_project(conn, memory, new) for memory in moving]
            for memory in moved:
                relations.link_topic(conn, memory)
            merged = sum(
                relations.collapse(conn, new, digest)
                for digest in sorted({m.content_hash for m in moved})
            )
        return {"from": old, "to": new, "renamed": len(moved), "duplicates_merged": merged}

    def projects(self) -> dict[str, int]:
        """Each project with live memories, and how many it holds."""
        with self.db.read() as conn:
            return memories.projects(conn)

    def relate(self, from_id: str, to_id: str, type_: str) -> Relation:
        type_ = model.check_relation_type(type_)
        with self.db.write() as conn:
            source = self._resolve(conn, from_id)
            target = self._resolve(conn, to_id)
            if source.id == target.id:
                raise InvalidInput("a memory cannot relate to itself")
            relations.add_relation(conn, source.id, target.id, type_)
        return Relation(source.id, target.id, type_, now_ms())

    # --- reading ------------------------------------------------------------------------------

    def recall(self, query: str, filters: Filters | None = None, limit: int = 10) -> list[Hit]:
        """The memories that best match ``query`` by meaning and by keyword, best first."""
        model.check_query(query)
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}")
        return hybrid.recall(
            self.db,
            self.index,
            lambda text: self.embedder.embed([text.strip()])[0],
            query,
            filters or Filters(),
            limit,
            self._pool,
        )

    def get(self, memory_id: str, include_forgotten: bool = False) -> Memory:
        """A memory by id (or a unique id prefix of 8+ characters); a forgotten one is NotFound
        unless ``include_forgotten`` (then its tombstone: no text, no tags)."""
        with self.db.read() as conn:
            return self._resolve(conn, memory_id, allow_deleted=include_forgotten)

    def relations(self, memory_id: str) -> list[Relation]:
        with self.db.read() as conn:
            memory = self._resolve(conn, memory_id, allow_deleted=True)
            return [Relation(*r) for r in relations.relations_of(conn, memory.id)]

    def known_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` this store has, live or forgotten."""
        with self.db.read() as conn:
            return memories.known_ids(conn, ids)

    def has_relation(self, from_id: str, to_id: str, type_: str) -> bool:
        with self.db.read() as conn:
            return relations.has_relation(conn, from_id, to_id, type_)

    def iter_with_vectors(
        self, filters: Filters | None = None, page: int = 500
    ) -> Iterator[tuple[Memory, str | None, bytes | None]]:
        """Every live memory matching ``filters`` with its vector, streamed in pages."""
        after = 0
        while True:
            with self.db.read() as conn:
                rows = memories.page_with_vectors(conn, filters or Filters(), after, page)
            for _rowid, memory, model_id, vector in rows:
                yield memory, model_id, vector
            if len(rows) < page:
                return
            after = rows[-1][0]

    def all_relations(self) -> list[Relation]:
        with self.db.read() as conn:
            return [Relation(*r) for r in relations.relations_among(conn)]

    def count(self, filters: Filters | None = None) -> int:
        with self.db.read() as conn:
            return memories.count_live(conn, filters or Filters())

    def stats(self) -> dict[str, Any]:
        with self.db.read() as conn:
            data = memories.stats(conn)
        size = sum(
            p.stat().st_size
            for p in (self.db.path, self.db.path.with_name(self.db.path.name + "-wal"))
            if p.exists()
        )
        return {
            **data,
            "path": str(self.db.path),
            "bytes": size,
            "model_id": self.embedder.model_id,
        }

    def _resolve(
        self, conn: sqlite3.Connection, memory_id: str, allow_deleted: bool = False
    ) -> Memory:
        memory_id = memory_id.strip()
        memory = memories.get(conn, memory_id)
        if memory is None and len(memory_id) >= MIN_PREFIX:
            matches = memories.ids_with_prefix(conn, memory_id)
            if len(matches) > 1:
                raise InvalidInput(f"{memory_id!r} matches several memories; give more of the id")
            if matches:
                memory = memories.get(conn, matches[0])
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

    # Defined last: inside the class body, `list` names this method, not the builtin.
    def list(
        self, filters: Filters | None = None, limit: int = 50, offset: int = 0
    ) -> list[Memory]:
        """Live memories, newest first."""
        if not 1 <= limit <= MAX_LIMIT or not 0 <= offset <= MAX_OFFSET:
            raise InvalidInput(
                f"limit must be between 1 and {MAX_LIMIT}, offset between 0 and {MAX_OFFSET}"
            )
        with self.db.read() as conn:
            return memories.listing(conn, filters or Filters(), limit, offset)
