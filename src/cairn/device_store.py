"""The verbs of Cairn (remember, recall, get, forget, list, relate, stats) over one store file.

This is what every edge calls: the CLI, the MCP server, the HTTP API and the Python API.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from cairn import model
from cairn.embedding.base import Embedder
from cairn.errors import InvalidInput, NotFound
from cairn.memory_rules import (
    NEAR_CANDIDATES,
    NEAR_DUPLICATE,
    NewMemory,
    check_distinct,
    check_limit,
    check_page,
    checked,
    checked_edit,
    near_duplicates,
    new_memory,
    topic_created_at,
)
from cairn.model import Filters, Hit, Memory, Relation, RememberResult
from cairn.search import hybrid
from cairn.search.vector_index import VectorIndex
from cairn.store import clock, inserts, memories, relations, search_queries
from cairn.store.clock import now_ms
from cairn.store.db import Database
from cairn.store.sync_state import SyncState


class Store:
    """A Cairn store: one SQLite file, an embedder, and the in-memory vector index over it."""

    def __init__(
        self,
        db: Database,
        embedder: Embedder,
        project: str = model.DEFAULT_PROJECT,
        source: str = "cli",
        near_duplicate: float = NEAR_DUPLICATE,
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
        if self._index is not None:
            self._index.close()  # saves a big index's changes for the next process
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

        A memory with a ``topic_key`` supersedes the newest of its project's topic, and memories
        with a cosine of ``near_duplicate`` or more are reported, not merged (``memory_rules``).
        """
        item = checked(NewMemory(content, kind, project, tags, topic_key), self.project)
        assert item.project is not None  # set by checked()
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
        # Only those close enough are read (usually none: most memories are new).
        nearest = index.search(vector, NEAR_CANDIDATES, close_only=True)
        close = [(r, c) for r, c in nearest if c >= self.near_duplicate]
        by_row = {}
        if close:
            with self.db.read() as conn:
                by_row = memories.by_rowids(conn, [r for r, _ in close])
        near = near_duplicates(
            item, [(by_row[r], c) for r, c in close if r in by_row], self.near_duplicate
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
        valid = [checked(item, self.project) for item in items]
        results: list[RememberResult] = []
        for start in range(0, len(valid), window):
            batch = valid[start : start + window]
            vectors = self.embedder.embed([m.content for m in batch], progress)
            results.extend(self._write(batch, vectors))
        return results

    def remember_embedded(
        self, items: Sequence[NewMemory], vectors: np.ndarray
    ) -> list[RememberResult]:
        """Remember memories whose vectors (of this store's model) were made elsewhere."""
        return self._write([checked(item, self.project) for item in items], vectors)

    def _write(self, items: Sequence[NewMemory], vectors: np.ndarray) -> list[RememberResult]:
        """Remember checked items in one transaction, with the outcome of remembering them one
        after the other: a text its project holds (or an earlier item brought) returns that
        memory with the item's tags added, a given id must be new, a topic's memory joins its
        chain. New memories are written a run at a time (one statement per table per run)."""
        model_id = self.embedder.model_id
        keys: list[tuple[str, str]] = []
        for item in items:
            assert item.project is not None  # set by checked()
            keys.append((item.project, model.content_hash(item.content)))
        results: dict[int, RememberResult] = {}
        run: list[tuple[int, Memory, np.ndarray]] = []  # made, not yet written
        waiting: set[tuple[str, str]] = set()  # the texts of the run
        with self.db.write() as conn:
            held = memories.live_by_hashes(conn, set(keys))
            taken = memories.known_ids(conn, [item.id for item in items if item.id])

            def write_run() -> None:
                written = inserts.insert_many(conn, [m for _i, m, _v in run], [v for *_, v in run])
                for (i, _made, _v), memory in zip(run, written, strict=True):
                    held[keys[i]] = memory
                    results[i] = RememberResult(memory, True)
                run.clear()
                waiting.clear()

            for i, (item, vector) in enumerate(zip(items, vectors, strict=True)):
                if keys[i] in held or keys[i] in waiting:
                    write_run()  # tags added to a held text are a change after the run's
                    held[keys[i]] = memories.add_tags(conn, held[keys[i]], item.tags)
                    results[i] = RememberResult(held[keys[i]], created=False)
                    continue
                if item.id is not None and item.id in taken:
                    raise InvalidInput(f"a memory with id {item.id} already exists")
                if item.topic_key:
                    write_run()  # the topic's chain is read from the rows before this one
                now = now_ms()
                created = item.created_at
                if created is None:  # a topic's new memory supersedes its newest
                    created = topic_created_at(now, memories.topic_newest(conn, item))
                made = new_memory(item, self.source, now, created, model_id, digest=keys[i][1])
                taken.add(made.id)
                run.append((i, made, vector))
                waiting.add(keys[i])
                if item.topic_key:
                    write_run()
                    superseded = relations.link_topic(conn, results[i].memory)
                    results[i] = replace(results[i], supersedes=superseded)
            write_run()
        return [results[i] for i in range(len(items))]

    @staticmethod
    def _known(conn: sqlite3.Connection, item: NewMemory) -> RememberResult | None:
        """The live memory of the item's project with identical content, given its new tags."""
        assert item.project is not None  # set by checked()
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
        text, kind, new_tags = checked_edit(content, kind, tags, settles)
        with self.db.read() as conn:
            current = memories.resolve(conn, memory_id)
        changes_text = text is not None and model.content_hash(text) != current.content_hash
        vector = self.embedder.embed([text])[0] if changes_text and text is not None else None
        with self.db.write() as conn:
            memory = memories.resolve(conn, current.id)
            if changes_text and text is not None:
                same = memories.live_by_hash(conn, memory.project, model.content_hash(text))
                check_distinct(memory.id, same)
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
            memory = memories.resolve(conn, memory_id, allow_deleted=True)
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
            return search_queries.projects(conn)

    def relate(self, from_id: str, to_id: str, type_: str) -> Relation:
        type_ = model.check_relation_type(type_)
        with self.db.write() as conn:
            source = memories.resolve(conn, from_id)
            target = memories.resolve(conn, to_id)
            if source.id == target.id:
                raise InvalidInput("a memory cannot relate to itself")
            relations.add_relation(conn, source.id, target.id, type_)
        return Relation(source.id, target.id, type_, now_ms())

    # --- reading ------------------------------------------------------------------------------

    def recall(self, query: str, filters: Filters | None = None, limit: int = 10) -> list[Hit]:
        """The memories that best match ``query`` by meaning and by keyword, best first."""
        model.check_query(query)
        check_limit(limit)
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
            return memories.resolve(conn, memory_id, allow_deleted=include_forgotten)

    def relations(self, memory_id: str) -> list[Relation]:
        with self.db.read() as conn:
            memory = memories.resolve(conn, memory_id, allow_deleted=True)
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
                rows = search_queries.page_with_vectors(conn, filters or Filters(), after, page)
            for _rowid, memory, model_id, vector in rows:
                yield memory, model_id, vector
            if len(rows) < page:
                return
            after = rows[-1][0]

    def all_relations(self) -> list[Relation]:
        with self.db.read() as conn:
            return [Relation(*r) for r in relations.relations_among(conn)]

    def relink_topics(self) -> int:
        """Link every topic's chain again (after a repair, once every memory is back; linking
        before the pull would leave a link across two memories the pull puts between them);
        returns how many links were added or removed."""
        with self.db.write() as conn:
            return relations.relink_topics(conn)

    def count(self, filters: Filters | None = None) -> int:
        with self.db.read() as conn:
            return search_queries.count_live(conn, filters or Filters())

    def stats(self) -> dict[str, Any]:
        with self.db.read() as conn:
            data = search_queries.stats(conn)
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

    # Defined last: inside the class body, `list` names this method, not the builtin.
    def list(
        self, filters: Filters | None = None, limit: int = 50, offset: int = 0
    ) -> list[Memory]:
        """Live memories, newest first."""
        check_page(limit, offset)
        with self.db.read() as conn:
            return search_queries.listing(conn, filters or Filters(), limit, offset)
