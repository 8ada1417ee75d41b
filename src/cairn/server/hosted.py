"""Hosted workspaces: the server embeds, searches and remembers for agents that cannot run Cairn.

A hosted workspace's log holds plain payloads (its user chose that when creating it). The
server folds the log into a search index (``ServerStorage.put_index``), merging each memory's
states by the same rule devices use (``cairn.sync.merge``), so the index holds what a device
that pulled the same log holds. The index is a projection of the log: its position says how much
of the log it folded, every search first folds what is new (so a recall sees every push
acknowledged before it), and a push folds right after it is stored.

Remembering through the API writes to the log as a device would, under the server process's own
device id and clock, with the vector the server computed: devices pull those memories and
never embed them again. End-to-end workspaces refuse all of this with ``not_hosted``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
from threadpoolctl import threadpool_limits

from cairn import model
from cairn.embedding.base import Embedder, Vectors
from cairn.errors import InvalidInput, MutationRejected, NotFound, NotHosted
from cairn.hlc import HLC, observe, tick
from cairn.ids import new_device_id, uuid7
from cairn.memory_rules import MAX_LIMIT, MAX_OFFSET, NewMemory
from cairn.model import Filters, Hit, Memory, RememberResult, Similar
from cairn.protocol import HOSTED, WireMutation
from cairn.replication import MemoryState, RelationState
from cairn.search import hybrid
from cairn.server.storage import INDEX_DIM, IndexedMemory, ServerStorage, Workspace
from cairn.sync import payload
from cairn.sync.merge import edited, forgotten, merge_memory, merge_relation
from cairn.sync.payload import PayloadError

log = logging.getLogger(__name__)

FOLD_PAGE = 2000
"""Mutations folded into the index per transaction."""
MAX_RECALL = MAX_LIST = MAX_LIMIT
MAX_EMBED = 256
"""Texts one /v1/embed call takes."""
NEAR_DUPLICATE = 0.92
"""Cosine from which remembering reports an existing memory as a near-duplicate (as local)."""
SOURCE = "api"
"""The ``source`` of memories remembered through the server's API."""


class Hosted:
    """The hosted side of one server process: its embedder, device id and clock."""

    def __init__(self, storage: ServerStorage, embedder: Embedder | None = None) -> None:
        self.storage = storage
        self._embedder = embedder
        self._embedder_lock = threading.Lock()
        self.device_id = f"server-{new_device_id()}"
        """This process's device id: each process has its own, so no two share a clock."""
        self._clock = HLC(0, 0, self.device_id)
        self._clock_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cairn-hosted")
        # Folds after pushes run here, off the request: a fold of a big push can take seconds
        # (HNSW inserts), and a client's next request on its connection must not wait for it.
        self._folder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cairn-fold")
        self._due: set[str] = set()
        self._due_lock = threading.Lock()

    @property
    def embedder(self) -> Embedder:
        """The same ONNX model devices use by default (loaded on the first hosted request,
        so a server of end-to-end workspaces never pays for it)."""
        with self._embedder_lock:
            if self._embedder is None:
                from cairn.embedding.onnx import OnnxEmbedder

                # numpy's BLAS threads fight onnxruntime's on small machines (see service.py).
                threadpool_limits(limits=1, user_api="blas")
                self._embedder = OnnxEmbedder()
            return self._embedder

    def close(self) -> None:
        self._pool.shutdown()
        self._folder.shutdown(cancel_futures=True)

    @staticmethod
    def require(workspace: Workspace) -> None:
        """NotHosted unless the workspace is hosted."""
        if workspace.mode != HOSTED:
            raise NotHosted(
                f"workspace {workspace.name!r} is end-to-end encrypted: this server cannot read "
                "its memories, so it cannot embed, remember or recall for it. Recall on a "
                "device, or create a workspace with `cairn server workspace create NAME --mode "
                "hosted` for cloud agents."
            )

    # -- the index ------------------------------------------------------------------------------

    def fold(self, workspace_id: str) -> int:
        """Fold every mutation the index has not seen into it; the position reached."""
        while True:
            position = self.storage.index_position(workspace_id)
            page = self.storage.pull(workspace_id, position, FOLD_PAGE, None)
            if not page.mutations:
                return position
            memories, relations = self._merge(workspace_id, page.mutations)
            # False: another process folded this part first; read the position again.
            self.storage.put_index(workspace_id, position, int(page.cursor), memories, relations)

    def schedule(self, workspace_id: str) -> None:
        """Fold the workspace soon, on this process's fold thread (once, however many pushes
        ask before it starts); a recall folds whatever is left itself."""
        with self._due_lock:
            if workspace_id in self._due:
                return
            self._due.add(workspace_id)
        self._folder.submit(self._fold_due, workspace_id)

    def _fold_due(self, workspace_id: str) -> None:
        with self._due_lock:
            self._due.discard(workspace_id)
        try:
            self.fold(workspace_id)
        except Exception:  # the next push or recall folds again; the log keeps everything
            log.exception("hosted index: folding workspace %s failed", workspace_id)

    def _merge(
        self, workspace_id: str, mutations: Sequence[WireMutation]
    ) -> tuple[list[IndexedMemory], list[RelationState]]:
        incoming: dict[str, MemoryState] = {}
        links: dict[str, RelationState] = {}
        for mutation in mutations:
            try:
                state = indexable(mutation)
            except PayloadError as exc:  # pushes are checked; only an older server's may fail
                log.warning("hosted index: %s skipped: %s", mutation.mutation_id, exc)
                continue
            if isinstance(state, RelationState):
                links[state.key] = merge_relation(links.get(state.key), state)
            else:
                known = incoming.get(state.memory.id)
                incoming[state.memory.id] = merge_memory(known, state).state if known else state
        latest = max((m.hlc for m in mutations), default=None)
        if latest is not None:
            self._observe(latest)
        stored = self.storage.indexed_payloads(workspace_id, list(incoming))
        merged: list[MemoryState] = []
        for memory_id, state in incoming.items():
            if memory_id in stored:
                state = merge_memory(_state(memory_id, stored[memory_id]), state).state
            merged.append(state)
        known_links = self.storage.indexed_relations(workspace_id, list(links))
        relations = [merge_relation(known_links.get(k), r) for k, r in links.items()]
        return self._indexed(merged), relations

    def _indexed(self, states: Sequence[MemoryState]) -> list[IndexedMemory]:
        """Index rows for these states; a live memory without a vector of the server's model
        (a device with another model) is embedded here, so semantic search finds it too."""
        model_id = self.embedder.model_id if states else ""
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
        if missing and self.embedder.dim == INDEX_DIM:
            made = self.embedder.embed([states[i].memory.content for i in missing])
            for i, vector in zip(missing, made, strict=True):
                vectors[i] = _bytes(vector)
        return [
            IndexedMemory(state.memory, payload.encode_memory(state), vector)
            for state, vector in zip(states, vectors, strict=True)
        ]

    # -- the verbs ------------------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not 1 <= len(texts) <= MAX_EMBED:
            raise InvalidInput(f"give between 1 and {MAX_EMBED} texts to embed")
        return self.embedder.embed([model.check_content(text) for text in texts])

    def remember(self, workspace_id: str, key_id: str, item: NewMemory, now: int) -> RememberResult:
        """Remember like a device: identical content in the project returns the existing
        memory (with any new tags added); a topic key supersedes the topic's newest memory."""
        content = model.check_content(item.content)
        kind = model.check_kind(item.kind)
        project = model.check_project(item.project or model.DEFAULT_PROJECT)
        tags = model.check_tags(item.tags)
        topic_key = model.check_topic_key(item.topic_key)
        digest = model.content_hash(content)
        self.fold(workspace_id)
        existing = self.storage.live_by_hash(workspace_id, project, digest)
        if existing is not None:
            if set(tags) <= set(existing.tags):
                return RememberResult(existing, created=False)
            state = self._state(workspace_id, existing.id)
            hlc = self._tick(now)
            tagged = replace(
                state.memory,
                tags=tuple(sorted({*existing.tags, *tags})),
                updated_at=now,
                hlc=hlc,
            )
            self._write(workspace_id, key_id, [replace(state, memory=tagged)], [], now)
            return RememberResult(tagged, created=False)
        vector = self.embedder.embed([content])[0]
        near = tuple(
            Similar(memory_id, cosine)
            for memory_id, cosine in self.storage.nearest(
                workspace_id, _bytes(vector), Filters(project=project), 10
            )
            if cosine >= NEAR_DUPLICATE
        )
        head = self.storage.topic_head(workspace_id, project, topic_key) if topic_key else None
        hlc = self._tick(now)
        memory = Memory(
            id=uuid7(now),
            content=content,
            kind=kind,
            project=project,
            tags=tags,
            topic_key=topic_key,
            source=SOURCE,
            created_at=max(now, head.created_at + 1) if head else now,
            updated_at=now,
            deleted=False,
            content_hash=digest,
            model_id=self.embedder.model_id,
            hlc=hlc,
        )
        links = []
        if head is not None:  # as a device's topic chain: the new memory supersedes the newest
            links.append(RelationState(memory.id, head.id, "supersedes", now, False, hlc))
        state = MemoryState(memory, hlc, {}, (), _bytes(vector))
        self._write(workspace_id, key_id, [state], links, now)
        return RememberResult(memory, True, head.id if head else None, near)

    def recall(
        self, workspace_id: str, key_id: str, query: str, filters: Filters, limit: int, now: int
    ) -> list[Hit]:
        """The best ``limit`` memories for ``query``, fused like a device's recall."""
        model.check_query(query)
        if not 1 <= limit <= MAX_RECALL:
            raise InvalidInput(f"limit must be between 1 and {MAX_RECALL}")
        self.fold(workspace_id)
        depth = max(limit * 4, 50)
        terms = hybrid.query_terms(query)
        pending = (
            self._pool.submit(self.storage.keyword, workspace_id, terms, filters, depth)
            if terms
            else None
        )
        vector = self.embedder.embed([query.strip()])[0]
        nearest = self.storage.nearest(workspace_id, _bytes(vector), filters, depth)
        semantic = [(m, c) for m, c in nearest if c >= hybrid.MIN_COSINE]
        keyword = pending.result() if pending else []
        found = self.storage.indexed_memories(
            workspace_id, list(dict.fromkeys(m for m, _ in [*semantic, *keyword]))
        )
        about = {m.id: (m.id, m.created_at) for m in found.values() if not m.deleted}
        successors = self.storage.successors(workspace_id, list(about))
        top = hybrid.fuse(semantic, keyword, about, successors, now)[:limit]
        hits = hybrid.successors_first(
            [Hit(found[key], score, match) for score, _, key, match in top]
        )
        detail = {"results": len(hits), "limit": limit}
        self.storage.record_recall(workspace_id, key_id, detail, now)
        return hits

    def list(
        self, workspace_id: str, filters: Filters, limit: int, offset: int
    ) -> tuple[list[Memory], int]:
        """Live memories, newest first, and how many match in all."""
        if not 1 <= limit <= MAX_LIST or not 0 <= offset <= MAX_OFFSET:
            raise InvalidInput(
                f"limit must be between 1 and {MAX_LIST}, offset between 0 and {MAX_OFFSET}"
            )
        self.fold(workspace_id)
        return self.storage.list_indexed(workspace_id, filters, limit, offset)

    def get(self, workspace_id: str, memory_id: str) -> Memory:
        """A live memory by its full id."""
        self.fold(workspace_id)
        return self._live(workspace_id, memory_id).memory

    def edit(
        self,
        workspace_id: str,
        key_id: str,
        memory_id: str,
        change: tuple[str | None, str | None, Sequence[str]],
        now: int,
    ) -> Memory:
        """Change a memory's content (embedded here) and/or kind and add tags, as a device's
        edit does; ``change`` is (content, kind, tags to add)."""
        content, kind, add_tags = change
        text = model.check_content(content) if content is not None else None
        new_kind = model.check_kind(kind) if kind is not None else None
        tags = model.check_tags(add_tags)
        if text is None and new_kind is None and not tags:
            raise InvalidInput("nothing to change; give new content, a kind and/or tags to add")
        self.fold(workspace_id)
        state = self._live(workspace_id, memory_id)
        new_text = None
        if text is not None and model.content_hash(text) != state.memory.content_hash:
            digest = model.content_hash(text)
            same = self.storage.live_by_hash(workspace_id, state.memory.project, digest)
            if same is not None and same.id != memory_id:
                raise InvalidInput(
                    f"memory {same.id} already says exactly this; forget one of them instead"
                )
            vector = _bytes(self.embedder.embed([text])[0])
            new_text = (text, digest, self.embedder.model_id, vector)
        new = edited(state, self._tick(now), now, content=new_text, kind=new_kind, tags=tags)
        if new != state:
            self._write(workspace_id, key_id, [new], [], now, action="edit")
        return new.memory

    def forget(self, workspace_id: str, key_id: str, memory_id: str, now: int) -> Memory:
        """Tombstone a memory: devices pull the deletion and erase it too. Forgetting a
        forgotten memory changes nothing and returns its tombstone."""
        self.fold(workspace_id)
        state = self._live(workspace_id, memory_id, allow_deleted=True)
        if state.memory.deleted:
            return state.memory
        gone = forgotten(state, self._tick(now), now)
        self._write(workspace_id, key_id, [gone], [], now, action="forget")
        return gone.memory

    # -- plumbing -------------------------------------------------------------------------------

    def _live(self, workspace_id: str, memory_id: str, allow_deleted: bool = False) -> MemoryState:
        stored = self.storage.indexed_payloads(workspace_id, [memory_id])
        if memory_id not in stored:
            raise NotFound(
                f"no memory has the id {memory_id!r} in this workspace; recall or list "
                "memories to find the ids"
            )
        state = _state(memory_id, stored[memory_id])
        if state.memory.deleted and not allow_deleted:
            raise NotFound(f"memory {memory_id} was forgotten")
        return state

    def _write(
        self,
        workspace_id: str,
        key_id: str,
        states: Sequence[MemoryState],
        links: Sequence[RelationState],
        now: int,
        action: str = "remember",
    ) -> None:
        """Append these states to the log (as this process's device), audit them under
        ``action`` and fold them in."""
        scope = {
            s.memory.id: payload.scope_tag(payload.HOSTED_SCOPE_KEY, s.memory.project)
            for s in states
        }
        wire = [
            WireMutation(
                uuid7(now),
                self.device_id,
                s.hlc,
                s.memory.id,
                scope[s.memory.id],
                payload.encode_memory(s),
            )
            for s in states
        ]
        wire += [
            WireMutation(
                uuid7(now),
                self.device_id,
                r.hlc,
                payload.relation_entity_id(r),
                scope.get(r.from_id),
                payload.encode_relation(r),
            )
            for r in links
        ]
        self.storage.push(workspace_id, wire, None, now, key_id)
        for s in states:
            self.storage.audit(workspace_id, key_id, action, {"memory_id": s.memory.id}, now)
        self.fold(workspace_id)

    def _state(self, workspace_id: str, memory_id: str) -> MemoryState:
        stored = self.storage.indexed_payloads(workspace_id, [memory_id])[memory_id]
        return _state(memory_id, stored)

    def _tick(self, now: int) -> str:
        with self._clock_lock:
            self._clock = tick(self._clock, now)
            return self._clock.pack()

    def _observe(self, packed: str) -> None:
        with self._clock_lock:
            self._clock = observe(self._clock, HLC.unpack(packed), int(time.time() * 1000))


def readable(mutations: Sequence[WireMutation]) -> None:
    """MutationRejected (code ``bad_payload`` per mutation) unless the server can read every
    payload: a hosted workspace's server folds them into its index."""
    rejected = {}
    for mutation in mutations:
        try:
            indexable(mutation)
        except PayloadError as exc:
            rejected[mutation.mutation_id] = (PayloadError.code, str(exc))
    if rejected:
        first = next(iter(rejected.items()))
        raise MutationRejected(
            f"{len(rejected)} mutation(s) refused, nothing applied; this hosted workspace takes "
            f"payloads its server can read; first: {first[0]}: {first[1][1]}",
            rejected,
        )


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


def _state(memory_id: str, body: bytes) -> MemoryState:
    """A memory's merged state as the index stores it."""
    slot = WireMutation("index", "server", "0000000000000-0000-server", memory_id, None, body)
    state = payload.decode(slot)
    assert isinstance(state, MemoryState)  # the index stores memories' states only
    return state


def _bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()
