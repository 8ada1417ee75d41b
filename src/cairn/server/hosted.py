"""Hosted workspaces: the server embeds, searches and remembers for agents that cannot run Cairn.

A hosted workspace's log holds plain payloads (its user chose that when creating it), which the
server folds into a search index (``cairn.server.hosted_index``). Remembering through the API
follows the device's memory rules (``cairn.memory_rules``) and writes to the log as a device
would, under the server process's own device id and clock, with the vector the server computed:
devices pull those memories and never embed them again. End-to-end workspaces refuse all of this
with ``not_hosted``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from threadpoolctl import threadpool_limits

from cairn import memory_rules, model
from cairn.embedding.base import Embedder, Vectors
from cairn.errors import InvalidInput, MutationRejected, NotHosted
from cairn.hlc import HLC, observe, tick
from cairn.ids import new_device_id, uuid7
from cairn.memory_rules import NewMemory
from cairn.model import Filters, Hit, Memory, Relation, RememberResult
from cairn.protocol import HOSTED, SERVER_DEVICE_PREFIX, WireMutation
from cairn.replication import MemoryState, RelationState
from cairn.search import hybrid
from cairn.server.hosted_index import HostedIndex, indexable, vector_bytes
from cairn.server.storage import ServerStorage, Workspace
from cairn.sync import payload
from cairn.sync.merge import edited, forgotten
from cairn.sync.payload import PayloadError

"""The most memories one page of a hosted listing returns."""
MAX_EMBED = 256
"""Texts one /v1/embed call takes."""
SOURCE = "api"
"""The ``source`` of memories remembered through the server's API."""


class Hosted:
    """The hosted side of one server process: its embedder, device id and clock."""

    def __init__(self, storage: ServerStorage, embedder: Embedder | None = None) -> None:
        self.storage = storage
        self._embedder = embedder
        self._embedder_lock = threading.Lock()
        self.device_id = f"{SERVER_DEVICE_PREFIX}{new_device_id()}"
        """This process's device id: each process has its own, so no two share a clock."""
        self._clock = HLC(0, 0, self.device_id)
        self._clock_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cairn-hosted")
        self.index = HostedIndex(storage, lambda: self.embedder, self._observe)

    @property
    def embedder(self) -> Embedder:
        """The same ONNX model devices use by default (loaded on the first hosted request,
        so a server of end-to-end workspaces never pays for it)."""
        with self._embedder_lock:
            if self._embedder is None:
                from cairn.embedding.onnx import OnnxEmbedder

                # numpy's BLAS threads fight onnxruntime's on small machines (see device_store.py).
                threadpool_limits(limits=1, user_api="blas")
                self._embedder = OnnxEmbedder()
            return self._embedder

    def close(self) -> None:
        self._pool.shutdown()
        self.index.close()

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
        return self.index.fold(workspace_id)

    def schedule(self, workspace_id: str) -> None:
        """Fold the workspace soon, on this process's fold thread (once, however many pushes
        ask before it starts); a recall folds whatever is left itself."""
        self.index.schedule(workspace_id)

    # -- the verbs ------------------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not 1 <= len(texts) <= MAX_EMBED:
            raise InvalidInput(f"give between 1 and {MAX_EMBED} texts to embed")
        return self.embedder.embed([model.check_content(text) for text in texts])

    def remember(self, workspace_id: str, key_id: str, item: NewMemory, now: int) -> RememberResult:
        """Remember like a device (``cairn.memory_rules``): identical content in the project
        returns the existing memory (with any new tags added); a topic key supersedes the
        topic's newest memory."""
        item = memory_rules.checked(item, model.DEFAULT_PROJECT)
        assert item.project is not None  # set by checked()
        self.fold(workspace_id)
        digest = model.content_hash(item.content)
        existing = self.storage.live_by_hash(workspace_id, item.project, digest)
        if existing is not None:
            tags = memory_rules.merged_tags(existing.tags, item.tags)
            if tags is None:
                return RememberResult(existing, created=False)
            state = self.index.state(workspace_id, existing.id)
            tagged = replace(state.memory, tags=tags, updated_at=now, hlc=self._tick(now))
            self._write(workspace_id, key_id, [replace(state, memory=tagged)], [], now)
            return RememberResult(tagged, created=False)
        vector = vector_bytes(self.embedder.embed([item.content])[0])
        in_project, depth = Filters(project=item.project), memory_rules.NEAR_CANDIDATES
        nearest = self.storage.nearest(workspace_id, vector, in_project, depth)
        found = self.storage.indexed_memories(workspace_id, [m for m, _ in nearest])
        near = memory_rules.near_duplicates(item, [(found[m], c) for m, c in nearest if m in found])
        topic = item.topic_key
        head = self.storage.topic_head(workspace_id, item.project, topic) if topic else None
        hlc = self._tick(now)
        created = memory_rules.topic_created_at(now, head)
        memory = memory_rules.new_memory(item, SOURCE, now, created, self.embedder.model_id, hlc)
        links = []
        if head is not None:  # as a device's topic chain: the new memory supersedes the newest
            links.append(RelationState(memory.id, head.id, "supersedes", now, False, hlc))
        state = MemoryState(memory, hlc, {}, (), vector)
        self._write(workspace_id, key_id, [state], links, now)
        return RememberResult(memory, True, head.id if head else None, near)

    def recall(
        self, workspace_id: str, key_id: str, query: str, filters: Filters, limit: int, now: int
    ) -> list[Hit]:
        """The best ``limit`` memories for ``query``, fused like a device's recall."""
        model.check_query(query)
        memory_rules.check_limit(limit)
        self.fold(workspace_id)
        depth = hybrid.depth(limit)
        terms = hybrid.query_terms(query)
        pending = (
            self._pool.submit(self.storage.keyword, workspace_id, terms, filters, depth)
            if terms
            else None
        )
        vector = self.embedder.embed([query.strip()])[0]
        nearest = self.storage.nearest(workspace_id, vector_bytes(vector), filters, depth)
        semantic = hybrid.meaningful(nearest)
        keyword = pending.result() if pending else []
        found, successors = self.storage.recalled(
            workspace_id, list(dict.fromkeys(m for m, _ in [*semantic, *keyword]))
        )
        about = {m.id: (m.id, m.created_at) for m in found.values() if not m.deleted}
        top = hybrid.fuse(semantic, keyword, about, successors, now, limit)
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
        memory_rules.check_page(limit, offset)
        self.fold(workspace_id)
        return self.storage.list_indexed(workspace_id, filters, limit, offset)

    def get(self, workspace_id: str, memory_id: str) -> Memory:
        """A live memory by id or unique id prefix (``memory_rules.resolve``)."""
        self.fold(workspace_id)
        return self._resolve(workspace_id, memory_id)

    def relations(self, workspace_id: str, memory_id: str) -> Sequence[Relation]:
        """The live relations from or to a memory (id or unique prefix), oldest first."""
        self.fold(workspace_id)
        memory = self._resolve(workspace_id, memory_id, allow_deleted=True)
        return self.storage.indexed_relations_of(workspace_id, memory.id)

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
        text, new_kind, tags = memory_rules.checked_edit(*change)
        self.fold(workspace_id)
        memory_id = self._resolve(workspace_id, memory_id).id
        state = self.index.state(workspace_id, memory_id)
        new_text = None
        if text is not None and model.content_hash(text) != state.memory.content_hash:
            digest = model.content_hash(text)
            same = self.storage.live_by_hash(workspace_id, state.memory.project, digest)
            memory_rules.check_distinct(memory_id, same)
            vector = vector_bytes(self.embedder.embed([text])[0])
            new_text = (text, digest, self.embedder.model_id, vector)
        new = edited(state, self._tick(now), now, content=new_text, kind=new_kind, tags=tags)
        if new != state:
            self._write(workspace_id, key_id, [new], [], now, action="edit")
        return new.memory

    def forget(self, workspace_id: str, key_id: str, memory_id: str, now: int) -> Memory:
        """Tombstone a memory: devices pull the deletion and erase it too. Forgetting a
        forgotten memory changes nothing and returns its tombstone."""
        self.fold(workspace_id)
        memory_id = self._resolve(workspace_id, memory_id, allow_deleted=True).id
        state = self.index.state(workspace_id, memory_id, allow_deleted=True)
        if state.memory.deleted:
            return state.memory
        gone = forgotten(state, self._tick(now), now)
        self._write(workspace_id, key_id, [gone], [], now, action="forget")
        return gone.memory

    # -- plumbing -------------------------------------------------------------------------------

    def _resolve(self, workspace_id: str, memory_id: str, allow_deleted: bool = False) -> Memory:
        return memory_rules.resolve(
            memory_id,
            lambda i: self.storage.indexed_memories(workspace_id, [i]).get(i),
            lambda prefix: self.storage.indexed_ids_with_prefix(workspace_id, prefix),
            allow_deleted,
        )

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
