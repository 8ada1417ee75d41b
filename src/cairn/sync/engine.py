"""The sync verbs over one store and one remote: join, push, pull, now, status, conflicts, resolve.

A push sends each changed entity's current state and clears its outbox entries only once the
remote acknowledged the batch; a batch the remote finds too large is split; mutations it refuses
go to the dead-letter list (with the reason) and the rest still go. A pull applies each page in
one transaction together with the cursor that follows it, so a crash never skips or half-applies
a page. Pulled memories keep the vector they were sent with: nothing is embedded again unless it
came from another embedding model.

Every payload is sealed (``cairn.sync.keys.Envelopes``) before it leaves and opened before
it is merged; one that fails to open is dead-lettered and the rest of its page still applies.
A push the remote refuses because another device revoked its key is sealed again, once.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cairn.crypto import keyring
from cairn.device_store import Store
from cairn.errors import (
    CairnError,
    CryptoError,
    InvalidInput,
    MutationRejected,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RemoteUnreachable,
    SyncError,
)
from cairn.model import iso
from cairn.protocol import WireMutation
from cairn.remotes.base import Remote
from cairn.replication import Conflict, MemoryState, Mutation, RelationState, SyncRules
from cairn.store import outbox, replica
from cairn.store.clock import device_id, next_hlc, now_ms
from cairn.sync import payload
from cairn.sync.apply import apply
from cairn.sync.keys import Envelopes, keyring_problem

CURSOR = "sync.cursor"
TARGET = "sync.target"
LAST_PUSH = "sync.last_push_at"
LAST_PULL = "sync.last_pull_at"
RESTORE = "sync.restore"
"""Set by `cairn repair`: pulls take this device's own mutations too (it lost some of what it
had written) until one pull has read the remote to its end."""
FIRST_PAGE = 1000

Progress = Callable[[int, int], None]
"""progress(done, total): how far a push or pull has come (total may grow during a pull)."""


@dataclass
class PushReport:
    pushed: int = 0
    stored: int = 0
    duplicates: int = 0
    kept_local: int = 0
    dead_lettered: int = 0
    batches: int = 0
    bytes: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    """How many changes were refused for each reason code (``revoked_key``, ...)."""


@dataclass
class PullReport:
    received: int = 0
    applied: int = 0
    unchanged: int = 0
    own: int = 0
    filtered: int = 0
    failed: int = 0
    embedded: int = 0
    duplicates_merged: int = 0
    pages: int = 0


@dataclass
class _Page:
    """A pulled page, decoded: the states to apply and what was skipped or unreadable."""

    cursor: str
    has_more: bool
    received: int
    own: int = 0
    filtered: int = 0
    states: list[MemoryState | RelationState] = field(default_factory=list)
    failed: list[tuple[WireMutation, CairnError]] = field(default_factory=list)


class Syncer:
    """Sync one store with one remote under selective-sync rules."""

    def __init__(
        self,
        store: Store,
        remote: Remote,
        keys: keyring.Unlocked | None,
        rules: SyncRules | None = None,
        batch_bytes: int = 6 * 1024 * 1024,
        batch_size: int = 5000,
        page_size: int = 5000,
    ) -> None:
        self.store = store
        self.remote = remote
        self.envelopes = Envelopes(remote, keys, store)
        self.rules = rules or SyncRules()
        self.batch_bytes = batch_bytes
        self.batch_size = batch_size
        self.page_size = page_size
        self._scopes: dict[str, str] = {}
        self._closed = False
        with store.db.write() as conn:
            self.device_id = device_id(conn)
            self._retarget(conn)

    def _retarget(self, conn: sqlite3.Connection) -> None:
        """A new remote or new rules: send everything again and read the remote from the start."""
        target = f"{self.remote.url}#{self.rules.fingerprint()}"
        if replica.get_meta(conn, TARGET) == target:
            return
        outbox.enqueue_all(conn, self.device_id, next_hlc(conn).pack())
        replica.set_meta(conn, CURSOR, None)
        replica.set_meta(conn, TARGET, target)

    def _scope(self, project: str) -> str:
        """The project's blind scope tag (an HMAC per memory is 4 % of a push, so cached)."""
        tag = self._scopes.get(project)
        if tag is None:
            tag = self._scopes[project] = payload.scope_tag(self.envelopes.scope_key, project)
        return tag

    # --- push -------------------------------------------------------------------------------

    def push(self, progress: Progress | None = None) -> PushReport:
        """Send every pending change; returns what happened (raises on transport failures)."""
        with self.store.db.read() as conn:
            total = outbox.count(conn)
        report = PushReport()
        after = 0
        done = 0
        while True:
            with self.store.db.read() as conn:
                queued = outbox.pending(conn, self.batch_size, after)
                wire, local_only = self._envelopes(conn, queued)
            if not queued:
                break
            after = queued[-1].seq
            if local_only:
                with self.store.db.write() as conn:
                    outbox.acknowledge(conn, local_only)
                report.kept_local += len(local_only)
            self._send_all(wire, report)
            done += len(queued)
            if progress:
                progress(done, max(total, done))
        if report.batches:
            with self.store.db.write() as conn:
                replica.set_meta(conn, LAST_PUSH, str(now_ms()))
        return report

    def _envelopes(
        self, conn: sqlite3.Connection, queued: Sequence[outbox.Pending]
    ) -> tuple[list[tuple[outbox.Pending, WireMutation]], list[outbox.Pending]]:
        """Each pending entity's state, sealed in an envelope; and the ones rules keep local."""
        memory_ids = [p.mutation.entity_id for p in queued if p.mutation.entity == "memory"]
        relations = replica.relation_states(
            conn, [p.mutation.entity_id for p in queued if p.mutation.entity == "relation"]
        )
        ends = {e for r in relations.values() for e in (r.from_id, r.to_id)}
        states = replica.memory_states(conn, [*memory_ids, *ends])
        wire: list[tuple[outbox.Pending, WireMutation]] = []
        local_only: list[outbox.Pending] = []
        for pending in queued:
            entity_id = pending.mutation.entity_id
            if pending.mutation.entity == "memory" and entity_id in states:
                state = states[entity_id][1]
                if not self.rules.allows(state.memory):
                    local_only.append(pending)
                    continue
                body, hlc, project = payload.encode_memory(state), state.hlc, state.memory.project
                wire_id = entity_id
            elif entity_id in relations:
                relation = relations[entity_id]
                endpoints = [states.get(e) for e in (relation.from_id, relation.to_id)]
                if any(e is None or not self.rules.allows(e[1].memory) for e in endpoints):
                    local_only.append(pending)
                    continue
                body, hlc = payload.encode_relation(relation), relation.hlc
                project = endpoints[0][1].memory.project if endpoints[0] else ""
                wire_id = payload.relation_entity_id(relation)
            else:  # nothing to send (cannot happen: rows are never removed)
                local_only.append(pending)
                continue
            wire.append(
                (
                    pending,
                    WireMutation(
                        pending.mutation.mutation_id,
                        self.device_id,
                        hlc,
                        wire_id,
                        self._scope(project),
                        self.envelopes.seal(wire_id, pending.mutation.mutation_id, body),
                    ),
                )
            )
        return wire, local_only

    def _send_all(
        self, items: list[tuple[outbox.Pending, WireMutation]], report: PushReport
    ) -> None:
        """Send ``items`` in batches under the byte budget, counting into ``report``."""
        batch: list[tuple[outbox.Pending, WireMutation]] = []
        size = 0
        for item in items:
            cost = len(item[1].payload) * 4 // 3 + 400  # base64 and JSON keys
            if batch and size + cost > self.batch_bytes:
                self._send(batch, report)
                batch, size = [], 0
            batch.append(item)
            size += cost
        if batch:
            self._send(batch, report)

    def _send(
        self,
        batch: list[tuple[outbox.Pending, WireMutation]],
        report: PushReport,
        resealed: bool = False,
    ) -> None:
        """Push one batch; split it when too large; seal again what is under a revoked key;
        dead-letter what the remote refuses otherwise."""
        for attempt in range(5):
            try:
                result = self.remote.push([w for _, w in batch])
                break
            except PayloadTooLarge as exc:
                if len(batch) == 1:
                    self._dead_letter(batch, exc.code, exc.message, report)
                    return
                half = len(batch) // 2
                self._send(batch[:half], report, resealed)
                self._send(batch[half:], report, resealed)
                return
            except MutationRejected as exc:
                refused = [item for item in batch if item[1].mutation_id in exc.rejected]
                if not refused:  # the remote named none: the batch as a whole is refused
                    self._dead_letter(batch, exc.code, exc.message, report)
                    return
                rest = [item for item in batch if item[1].mutation_id not in exc.rejected]
                stale = []  # sealed under a key another device revoked: sealed again, once
                for item in refused:
                    code, message = exc.rejected[item[1].mutation_id]
                    if code == "revoked_key" and not resealed:
                        stale.append(item)
                    else:
                        self._dead_letter([item], code, message, report)
                if stale:
                    self.envelopes.refresh()
                    fresh = [(p, self.envelopes.reseal(w)) for p, w in stale]
                    self._send(fresh, report, resealed=True)
                if rest:
                    self._send(rest, report, resealed)
                return
            except RateLimited as exc:
                if attempt == 4:
                    raise
                time.sleep(min(exc.retry_after, 30.0))
        with self.store.db.write() as conn:
            outbox.acknowledge(conn, [p for p, _ in batch])
        report.pushed += len(batch)
        report.stored += result.stored
        report.duplicates += result.duplicates
        report.batches += 1
        report.bytes += sum(len(w.payload) for _, w in batch)

    def _dead_letter(
        self,
        items: Sequence[tuple[outbox.Pending, WireMutation]],
        code: str,
        message: str,
        report: PushReport,
    ) -> None:
        with self.store.db.write() as conn:
            outbox.dead_letter(conn, "push", [p.mutation for p, _ in items], code, message)
        report.dead_lettered += len(items)
        report.dead_letter_reasons[code] = report.dead_letter_reasons.get(code, 0) + len(items)

    # --- pull -------------------------------------------------------------------------------

    def pull(self, progress: Progress | None = None, wait: float = 0.0) -> PullReport:
        """Apply everything the remote has after this device's cursor.

        The next page is fetched and decoded on a second thread while this one is applied
        (SQLite releases the GIL while it writes); each page still commits with its own cursor.
        """
        scopes = [self._scope(p) for p in self.rules.include_projects]
        counts = PullReport()
        with self.store.db.read() as conn:
            cursor = start = replica.get_meta(conn, CURSOR)
            own = replica.get_meta(conn, RESTORE) is not None
        # Trigger: the first page has nothing to overlap with. Why: a small one starts the
        # apply sooner, while later pages stay large (each commit costs the keyword index a
        # segment merge). Outcome: measured in bench/bench_sync.py. It is fetched on this
        # thread: a long-poll on the pool's (non-daemon) thread would hold up interpreter exit.
        page = self._fetch(cursor, scopes or None, wait, min(self.page_size, FIRST_PAGE), own)
        finished = False
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cairn-pull") as fetcher:
            while True:
                ahead = None
                if page.has_more:
                    ahead = fetcher.submit(
                        self._fetch, page.cursor, scopes or None, 0.0, self.page_size, own
                    )
                if not self._apply_page(page, cursor, counts):
                    break  # another pull of this store moved the cursor first: it goes on
                cursor = page.cursor
                if progress:
                    progress(counts.received, counts.received + (self.page_size if ahead else 0))
                if ahead is None:
                    finished = True
                    break
                page = ahead.result()
        if cursor is not None and cursor != start and not self._closed:
            self.remote.mark_read(cursor)  # an object remote records how far this device read
        if counts.received or (own and finished):
            with self.store.db.write() as conn:
                if counts.received:
                    replica.set_meta(conn, LAST_PULL, str(now_ms()))
                if own and finished:  # the remote was read to its end: restored
                    replica.set_meta(conn, RESTORE, None)
        return counts

    def _fetch(
        self,
        cursor: str | None,
        scopes: Sequence[str] | None,
        wait: float,
        limit: int,
        own: bool = False,
    ) -> _Page:
        """One page from the remote, decoded and sorted into what to apply and what not
        (this device's own mutations are skipped unless ``own``: see ``RESTORE``)."""
        page = self.remote.pull(cursor, limit, scopes, wait)
        decoded = _Page(page.cursor, page.has_more, len(page.mutations))
        for mutation in page.mutations:
            if mutation.device_id == self.device_id and not own:
                decoded.own += 1  # this device's own change: already here
                continue
            try:
                state = payload.decode(mutation, self.envelopes.open(mutation))
            except (payload.PayloadError, CryptoError) as exc:
                decoded.failed.append((mutation, exc))
                continue
            if isinstance(state, MemoryState) and not self.rules.allows(state.memory):
                decoded.filtered += 1
                continue
            decoded.states.append(state)
        return decoded

    def _apply_page(self, page: _Page, after: str | None, counts: PullReport) -> bool:
        """Apply ``page`` (fetched after cursor ``after``) and move the cursor past it; False,
        changing nothing, when the cursor is no longer ``after`` (a concurrent pull, such as a
        worker's long-poll beside a requested round, applied it already) or when this Syncer
        was closed meanwhile (a long-poll answered after its worker stopped)."""
        with self.store.db.write() as conn:
            if self._closed or replica.get_meta(conn, CURSOR) != after:
                return False
            result = apply(conn, page.states, self.store.embedder.model_id)
            for bad, error in page.failed:
                entry = Mutation(bad.mutation_id, bad.device_id, bad.hlc, "?", bad.entity_id)
                outbox.dead_letter(conn, "pull", [entry], error.code, error.message)
            replica.set_meta(conn, CURSOR, page.cursor)
        counts.received += page.received
        counts.applied += result.memories + result.relations
        counts.unchanged += result.unchanged
        counts.own += page.own
        counts.filtered += page.filtered
        counts.failed += len(page.failed)
        counts.embedded += self._embed_missing(result.needs_vector)
        counts.duplicates_merged += result.duplicates_merged
        counts.pages += 1 if page.received else 0  # pages that brought something
        return True

    def _embed_missing(self, memory_ids: Sequence[str]) -> int:
        """Embed pulled memories that came without a vector of this device's model."""
        if not memory_ids:
            return 0
        with self.store.db.read() as conn:
            states = replica.memory_states(conn, memory_ids)
        todo = [s for _, s in states.values() if not s.memory.deleted and s.vector is None]
        if not todo:
            return 0
        vectors = self.store.embedder.embed([s.memory.content for s in todo])
        with self.store.db.write() as conn:
            for state, vector in zip(todo, vectors, strict=True):
                replica.set_vector(
                    conn,
                    state.memory.id,
                    state.memory.content_hash,
                    self.store.embedder.model_id,
                    np.ascontiguousarray(vector, dtype="<f4").tobytes(),
                )
        return len(todo)

    # --- together, and what the user sees ------------------------------------------------------

    def now(self, progress: Progress | None = None) -> dict[str, Any]:
        """Push, pull, then push what the pull caused (merged duplicates, topic links)."""
        pushed = self.push(progress)
        pulled = self.pull(progress)
        again = self.push(progress)
        return {"push": asdict(pushed), "pull": asdict(pulled), "push_after_pull": asdict(again)}

    def status(self) -> dict[str, Any]:
        """Local sync state, plus the remote's if it answers (offline is not an error here)."""
        local = {"remote": self.remote.url, **local_status(self.store), "rules": asdict(self.rules)}
        try:
            local["remote_status"] = self.remote.status()
            local["reachable"] = True
        except SyncError as exc:
            local["reachable"] = not isinstance(exc, RemoteUnreachable)  # a refusal is an answer
            local["error"] = exc.to_dict()
        return local

    def conflicts(self) -> list[Conflict]:
        with self.store.db.read() as conn:
            return replica.conflicts(conn)

    def resolve(self, ref: str, keep: str) -> dict[str, Any]:
        """Settle a conflict: keep ``local`` (the content shown now), ``remote`` (the kept
        version) or ``both`` (the kept version becomes a memory of its own)."""
        if keep not in ("local", "remote", "both"):
            raise InvalidInput("--keep must be local, remote or both")
        ref = ref.strip()
        found = [
            c
            for c in self.conflicts()
            if ref == c.id or ref == c.memory_id or (len(ref) >= 8 and c.memory_id.startswith(ref))
        ]
        if not found:
            raise NotFound(f"no open conflict matches {ref!r}; `cairn sync conflicts` lists them")
        if len(found) > 1:
            ids = ", ".join(c.id for c in found)
            raise InvalidInput(f"{ref!r} matches several conflicts ({ids}); give one conflict id")
        conflict = found[0]
        created = None
        if keep == "both":
            current = self.store.get(conflict.memory_id)
            created = self.store.remember(
                conflict.content, current.kind, current.project, current.tags, None
            ).memory.id
        memory = self.store.edit(
            conflict.memory_id,
            content=conflict.content if keep == "remote" else None,
            settles=[conflict.hlc],
        )
        return {
            "conflict": conflict.id,
            "kept": keep,
            "memory": memory.to_dict(),
            "created": created,
        }

    def dead_letters(self) -> list[outbox.DeadLetter]:
        with self.store.db.read() as conn:
            return outbox.dead_letters(conn)

    def retry_dead_letters(self) -> int:
        """Queue refused pushes again (after fixing their cause) and clear the list."""
        with self.store.db.write() as conn:
            return outbox.requeue_dead_letters(conn, self.device_id, next_hlc(conn).pack())

    def close(self) -> None:
        self._closed = True
        self.remote.close()


def local_status(store: Store) -> dict[str, Any]:
    """What this device knows of its sync without asking the remote (``keyring``: why the
    remote's newest keyring version is not the one in use, if it is not)."""
    device = store.device_id()
    problem = keyring_problem(store)
    with store.db.read() as conn:
        return {
            "device_id": device,
            "keyring": problem,
            "pending": outbox.count(conn),
            "dead_letters": len(outbox.dead_letters(conn)),
            "conflicts": len(replica.conflicts(conn)),
            "cursor": replica.get_meta(conn, CURSOR),
            "last_push_at": _iso(replica.get_meta(conn, LAST_PUSH)),
            "last_pull_at": _iso(replica.get_meta(conn, LAST_PULL)),
        }


def _iso(ms: str | None) -> str | None:
    return iso(int(ms)) if ms else None
