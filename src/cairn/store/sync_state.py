"""What sync keeps in a store: its meta keys, outbox and lease, read and written in named steps.

The sync package (``cairn.sync``) decides what to send and apply; this class is its only way
into the store's database, so each step below is one transaction (a pulled page commits with
the cursor that follows it; a retarget queues everything again with the cursor reset).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from cairn import vector_bytes
from cairn.replication import Conflict, MemoryState, Mutation, RelationState
from cairn.store import lease, outbox, replica
from cairn.store.clock import device_id, next_hlc, now_ms
from cairn.store.db import Database

CURSOR = "sync.cursor"
TARGET = "sync.target"
LAST_PUSH = "sync.last_push_at"
LAST_PULL = "sync.last_pull_at"
RESTORE = "sync.restore"
"""Set by `cairn repair`: pulls take this device's own mutations too (it lost some of what it
had written) until one pull has read the remote to its end."""
KEYRING = "sync.keyring"
"""The last keyring version this device accepted (its last good copy)."""
KEYRING_PROBLEM = "sync.keyring_problem"
"""Why the remote's newest keyring version is not the one in use (JSON), if so."""
WORKER = "sync.worker"
"""The lease holder's worker status (JSON), for ``cairn sync status`` in any process."""
ROUND = "sync.round"
"""The outcome of the latest round a worker ran because someone asked (``lease.ask``)."""

T = TypeVar("T")


class Embeds(Protocol):
    """What embeds pulled memories that came without a vector of this device's model."""

    @property
    def model_id(self) -> str: ...

    def embed(self, texts: Sequence[str]) -> Any: ...


class SyncState:
    """The sync bookkeeping of one store's database (reached as ``Store.sync_state``)."""

    def __init__(self, db: Database, embedder: Embeds) -> None:
        self.db = db
        self.embedder = embedder

    @property
    def model_id(self) -> str:
        """The embedding model of this device's vectors."""
        return self.embedder.model_id

    # --- where sync stands --------------------------------------------------------------------

    def retarget(self, target: str) -> str:
        """This device's id; a new ``target`` (remote and rules) queues everything again and
        reads the remote from the start."""
        with self.db.write() as conn:
            device = device_id(conn)
            if replica.get_meta(conn, TARGET) != target:
                outbox.enqueue_all(conn, device, next_hlc(conn).pack())
                replica.set_meta(conn, CURSOR, None)
                replica.set_meta(conn, TARGET, target)
            return device

    def cursor(self) -> tuple[str | None, bool]:
        """How far this device read the remote, and whether it is restoring (``RESTORE``)."""
        with self.db.read() as conn:
            return replica.get_meta(conn, CURSOR), replica.get_meta(conn, RESTORE) is not None

    def pulled(self, received: bool, restored: bool) -> None:
        """Record a pull that ``received`` something and/or read the remote to its end."""
        if not (received or restored):
            return
        with self.db.write() as conn:
            if received:
                replica.set_meta(conn, LAST_PULL, str(now_ms()))
            if restored:
                replica.set_meta(conn, RESTORE, None)

    def pushed(self) -> None:
        with self.db.write() as conn:
            replica.set_meta(conn, LAST_PUSH, str(now_ms()))

    def local(self) -> dict[str, Any]:
        """Counts and marks of this device's sync, in one read (times in unix ms)."""
        with self.db.read() as conn:
            last_push, last_pull = (replica.get_meta(conn, k) for k in (LAST_PUSH, LAST_PULL))
            return {
                "pending": outbox.count(conn),
                "dead_letters": len(outbox.dead_letters(conn)),
                "conflicts": len(replica.conflicts(conn)),
                "cursor": replica.get_meta(conn, CURSOR),
                "last_push_at": int(last_push) if last_push else None,
                "last_pull_at": int(last_pull) if last_pull else None,
            }

    # --- the outbox ---------------------------------------------------------------------------

    def pending_count(self) -> int:
        with self.db.read() as conn:
            return outbox.count(conn)

    def outgoing(
        self, limit: int, after: int
    ) -> tuple[list[outbox.Pending], dict[str, tuple[int, MemoryState]], dict[str, RelationState]]:
        """The next pending changes after outbox ``after``, with the states of their memories
        and relations (and of the relations' ends), read together."""
        with self.db.read() as conn:
            queued = outbox.pending(conn, limit, after)
            relations = replica.relation_states(
                conn, [p.mutation.entity_id for p in queued if p.mutation.entity == "relation"]
            )
            ends = {e for r in relations.values() for e in (r.from_id, r.to_id)}
            memory_ids = [p.mutation.entity_id for p in queued if p.mutation.entity == "memory"]
            return queued, replica.memory_states(conn, [*memory_ids, *ends]), relations

    def acknowledge(self, done: Sequence[outbox.Pending]) -> None:
        with self.db.write() as conn:
            outbox.acknowledge(conn, done)

    def dead_letter(
        self, direction: str, mutations: Sequence[Mutation], code: str, message: str
    ) -> None:
        with self.db.write() as conn:
            outbox.dead_letter(conn, direction, mutations, code, message)

    def dead_letters(self) -> list[outbox.DeadLetter]:
        with self.db.read() as conn:
            return outbox.dead_letters(conn)

    def requeue_dead_letters(self, device: str) -> int:
        """Queue refused pushes again and clear the list; how many were queued."""
        with self.db.write() as conn:
            return outbox.requeue_dead_letters(conn, device, next_hlc(conn).pack())

    def conflicts(self) -> list[Conflict]:
        with self.db.read() as conn:
            return replica.conflicts(conn)

    # --- pulled pages -------------------------------------------------------------------------

    def apply_page(
        self,
        after: str | None,
        cursor: str,
        apply: Callable[[sqlite3.Connection], T],
        failed: Sequence[tuple[Mutation, str, str]],
        closed: Callable[[], bool],
    ) -> T | None:
        """Run ``apply`` (the page's merge), dead-letter what did not open (mutation, code,
        message) and move the cursor from ``after`` to ``cursor``, in one transaction; None,
        changing nothing, when the cursor is no longer ``after`` or ``closed()``."""
        with self.db.write() as conn:
            if closed() or replica.get_meta(conn, CURSOR) != after:
                return None
            result = apply(conn)
            for mutation, code, message in failed:
                outbox.dead_letter(conn, "pull", [mutation], code, message)
            replica.set_meta(conn, CURSOR, cursor)
            return result

    def embed_missing(self, memory_ids: Sequence[str]) -> int:
        """Embed pulled memories that came without a vector of this device's model."""
        if not memory_ids:
            return 0
        with self.db.read() as conn:
            states = replica.memory_states(conn, memory_ids)
        todo = [s for _, s in states.values() if not s.memory.deleted and s.vector is None]
        if not todo:
            return 0
        vectors = self.embedder.embed([s.memory.content for s in todo])
        with self.db.write() as conn:
            for state, vector in zip(todo, vectors, strict=True):
                replica.set_vector(
                    conn,
                    state.memory.id,
                    state.memory.content_hash,
                    self.embedder.model_id,
                    vector_bytes.stored(vector),
                )
        return len(todo)

    # --- the keyring's last good copy ---------------------------------------------------------

    def keyring_copy(self) -> str | None:
        with self.db.read() as conn:
            return replica.get_meta(conn, KEYRING)

    def keyring_problem(self) -> str | None:
        with self.db.read() as conn:
            return replica.get_meta(conn, KEYRING_PROBLEM)

    def remember_keyring(self, copy: str, problem: str | None) -> None:
        with self.db.write() as conn:
            replica.set_meta(conn, KEYRING, copy)
            replica.set_meta(conn, KEYRING_PROBLEM, problem)

    # --- the lease, requested rounds and the worker's status ---------------------------------

    def claim(self, owner: str, ttl_ms: int, gone: Callable[[str], bool]) -> bool:
        """Take or renew the lease for ``owner``; a holder ``gone`` says has ended loses it."""
        now = now_ms()
        with self.db.write() as conn:
            current = lease.holder(conn, now)
            if current is not None and current.owner != owner and gone(current.owner):
                lease.release(conn, current.owner)
            return lease.acquire(conn, owner, now, ttl_ms)

    def release(self, owner: str) -> None:
        with self.db.write() as conn:
            lease.release(conn, owner)

    def ask(self) -> int:
        """Ask the lease holder for a round; this request's number."""
        with self.db.write() as conn:
            return lease.ask(conn)

    def requests(self) -> tuple[int | None, int, str | None]:
        """What the lease holder watches: the newest outbox entry, the latest request for a
        round and the latest round's record."""
        with self.db.read() as conn:
            return outbox.latest(conn), lease.asked(conn), replica.get_meta(conn, ROUND)

    def round(self) -> tuple[str | None, lease.Lease | None]:
        """The latest round's record and the live lease."""
        with self.db.read() as conn:
            return replica.get_meta(conn, ROUND), lease.holder(conn, now_ms())

    def set_round(self, record: str) -> None:
        with self.db.write() as conn:
            replica.set_meta(conn, ROUND, record)

    def latest_change(self) -> int | None:
        with self.db.read() as conn:
            return outbox.latest(conn)

    def set_worker(self, record: str) -> None:
        with self.db.write() as conn:
            replica.set_meta(conn, WORKER, record)

    def worker(self) -> tuple[str | None, lease.Lease | None, int, int]:
        """The worker's status record, the live lease, the pending and dead-letter counts."""
        with self.db.read() as conn:
            return (
                replica.get_meta(conn, WORKER),
                lease.holder(conn, now_ms()),
                outbox.count(conn),
                len(outbox.dead_letters(conn)),
            )
