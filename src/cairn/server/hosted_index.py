"""The hosted search index: the projection of a hosted workspace's log that search reads.

The server folds the log into the index (``ServerStorage.put_index``), merging each memory's
states by the same rule devices use (``cairn.sync.merge``), so the index holds what a device
that pulled the same log holds. Its position says how much of the log it folded; every search
first folds what is new (so a recall sees every push acknowledged before it), and a push folds
right after it is stored. A live memory without a vector of the server's model is embedded as
it is folded in.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from cairn.embedding.base import Embedder
from cairn.errors import NotFound
from cairn.protocol import WireMutation
from cairn.replication import MemoryState, RelationState
from cairn.server.storage import INDEX_DIM, IndexedMemory, ServerStorage
from cairn.sync import payload
from cairn.sync.merge import merge_memory, merge_relation
from cairn.sync.payload import PayloadError

log = logging.getLogger(__name__)

FOLD_PAGE = 2000
"""Mutations folded into the index per transaction."""


@dataclass(frozen=True)
class _Page:
    """A page of the log as a fold reads it: how many mutations it holds, each readable one
    with its state, the position after the page, whether the log held more, and the page's
    newest clock."""

    read: int
    states: list[tuple[WireMutation, MemoryState | RelationState]]
    cursor: int
    has_more: bool
    latest: str | None


class HostedIndex:
    """The index of every hosted workspace in one storage, and the thread that folds it."""

    def __init__(
        self,
        storage: ServerStorage,
        embedder: Callable[[], Embedder],
        observe: Callable[[str], None],
    ) -> None:
        self.storage = storage
        self._embedder = embedder
        self._observe = observe
        """Called with the newest clock of each folded page (the server's clock keeps up)."""
        # Folds after pushes run here, off the request: a fold of a big push can take seconds
        # (HNSW inserts), and a client's next request on its connection must not wait for it.
        self._folder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cairn-fold")
        self._reader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cairn-fold-read")
        self._due: set[str] = set()
        self._due_lock = threading.Lock()

    def close(self) -> None:
        self._folder.shutdown(cancel_futures=True)
        self._reader.shutdown(cancel_futures=True)

    def fold(self, workspace_id: str) -> int:
        """Fold every mutation the index has not seen into it; the position reached."""
        position, latest = self.storage.index_lag(workspace_id)
        if position >= latest:  # one read when there is nothing new (every recall asks)
            return position
        page = self._page(workspace_id, position)
        while page.read:
            # The next page is read and decoded (Python) while this one is written (the
            # database): on two cores the two halves of a fold overlap.
            ahead = page.has_more and self.storage.fold_ahead
            upcoming = self._reader.submit(self._page, workspace_id, page.cursor) if ahead else None
            memories, relations = self._merge(workspace_id, page)
            if self.storage.put_index(workspace_id, position, page.cursor, memories, relations):
                position = page.cursor
                if not page.has_more:  # the page held all the log had when it was read
                    return position
                page = upcoming.result() if upcoming else self._page(workspace_id, position)
            else:  # another process folded this part first: go on from where it got to
                if upcoming is not None:
                    upcoming.cancel()
                position = self.storage.index_position(workspace_id)
                page = self._page(workspace_id, position)
        return position

    def schedule(self, workspace_id: str) -> None:
        """Fold the workspace soon, on the fold thread (once, however many pushes ask before
        it starts); a recall folds whatever is left itself."""
        with self._due_lock:
            if workspace_id in self._due:
                return
            self._due.add(workspace_id)
        self._folder.submit(self._fold_due, workspace_id)

    def state(self, workspace_id: str, memory_id: str, allow_deleted: bool = False) -> MemoryState:
        """A memory's merged state as the index holds it; NotFound when the index has no such
        memory, or it was forgotten (unless ``allow_deleted``)."""
        stored = self.storage.indexed_payloads(workspace_id, [memory_id])
        if memory_id not in stored:
            raise NotFound(
                f"no memory has the id {memory_id!r} in this workspace; recall or list "
                "memories to find the ids"
            )
        state = state_of(memory_id, stored[memory_id])
        if state.memory.deleted and not allow_deleted:
            raise NotFound(f"memory {memory_id} was forgotten")
        return state

    def _fold_due(self, workspace_id: str) -> None:
        with self._due_lock:
            self._due.discard(workspace_id)
        try:
            self.fold(workspace_id)
        except Exception:  # the next push or recall folds again; the log keeps everything
            log.exception("hosted index: folding workspace %s failed", workspace_id)

    def _page(self, workspace_id: str, position: int) -> _Page:
        """The log's next page after ``position``, each mutation's state decoded once."""
        page = self.storage.pull(workspace_id, position, FOLD_PAGE, None)
        states: list[tuple[WireMutation, MemoryState | RelationState]] = []
        for mutation in page.mutations:
            try:
                states.append((mutation, indexable(mutation)))
            except PayloadError as exc:  # pushes are checked; only an older server's may fail
                log.warning("hosted index: %s skipped: %s", mutation.mutation_id, exc)
        latest = max((m.hlc for m in page.mutations), default=None)
        return _Page(len(page.mutations), states, int(page.cursor), page.has_more, latest)

    def _merge(
        self, workspace_id: str, page: _Page
    ) -> tuple[list[IndexedMemory], list[RelationState]]:
        # Each memory's state, with the payload it came in when no merge changed it (then
        # the index stores those bytes rather than encoding the same state again).
        incoming: dict[str, tuple[MemoryState, bytes | None]] = {}
        links: dict[str, RelationState] = {}
        for mutation, state in page.states:
            if isinstance(state, RelationState):
                links[state.key] = merge_relation(links.get(state.key), state)
            else:
                known = incoming.get(state.memory.id)
                incoming[state.memory.id] = (
                    (merge_memory(known[0], state).state, None)
                    if known
                    else (state, mutation.payload)
                )
        if page.latest is not None:
            self._observe(page.latest)
        stored = self.storage.indexed_payloads(workspace_id, list(incoming))
        merged: list[tuple[MemoryState, bytes | None]] = []
        for memory_id, (state, body) in incoming.items():
            if memory_id in stored:
                older = state_of(memory_id, stored[memory_id])
                state, body = merge_memory(older, state).state, None
            merged.append((state, body))
        known_links = self.storage.indexed_relations(workspace_id, list(links))
        relations = [merge_relation(known_links.get(k), r) for k, r in links.items()]
        return self._indexed(merged), relations

    def _indexed(self, merged: Sequence[tuple[MemoryState, bytes | None]]) -> list[IndexedMemory]:
        """Index rows for these states (each with its payload, None: encode it); a live memory
        without a vector of the server's model (a device with another model) is embedded here,
        so semantic search finds it too."""
        states = [state for state, _ in merged]
        embedder = self._embedder() if states else None  # no states: no model to load
        model_id = embedder.model_id if embedder is not None else ""
        vectors: list[bytes | None] = []
        missing: list[int] = []
        for i, state in enumerate(states):
            usable = (
                state.vector is not None
                and state.memory.model_id == model_id
                and len(state.vector) == INDEX_DIM * 4
            )
            vectors.append(state.vector if usable else None)
            if not usable and not state.memory.deleted:
                missing.append(i)
        if missing and embedder is not None and embedder.dim == INDEX_DIM:
            made = embedder.embed([states[i].memory.content for i in missing])
            for i, vector in zip(missing, made, strict=True):
                vectors[i] = vector_bytes(vector)
        return [
            IndexedMemory(state.memory, body or payload.encode_memory(state), vector)
            for (state, body), vector in zip(merged, vectors, strict=True)
        ]


def indexable(mutation: WireMutation) -> MemoryState | RelationState:
    """The state a hosted workspace's mutation carries, if its index can hold it; PayloadError
    otherwise (unreadable, or text with a NUL, which PostgreSQL's text type refuses: one such
    row would stop every later fold, and with it every recall of the workspace)."""
    state = payload.decode(mutation)
    if isinstance(state, RelationState):
        texts = [state.from_id, state.to_id, state.type, state.hlc]
    else:
        m = state.memory
        texts = [m.content, m.kind, m.project, *m.tags, m.topic_key or "", m.source]
        texts += [m.content_hash, m.model_id or "", m.hlc, state.created_hlc]
        texts += [*state.field_hlc, *state.field_hlc.values(), *state.ancestors]
        texts += [t for r in state.revisions for t in (r.hlc, r.content, r.content_hash)]
    if any("\x00" in text for text in texts):
        raise PayloadError(f"mutation {mutation.mutation_id} holds a NUL character in its text")
    return state


def state_of(memory_id: str, body: bytes) -> MemoryState:
    """A memory's merged state as the index stores it."""
    slot = WireMutation("index", "server", "0000000000000-0000-server", memory_id, None, body)
    state = payload.decode(slot)
    assert isinstance(state, MemoryState)  # the index stores memories' states only
    return state


def vector_bytes(vector: np.ndarray) -> bytes:
    """A vector as the index stores it: little-endian float32."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()
