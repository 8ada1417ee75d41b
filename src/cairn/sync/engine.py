"""The sync verbs over one store and one remote: push, pull, now, status, conflicts, resolve.

A ``Syncer`` is a ``Channel`` (the store's sync state, the remote, the envelopes, the rules)
with the verbs the user runs: pushing (``cairn.sync.push``), pulling (``cairn.sync.pull``),
both in one round, and what the user sees and settles (status, conflicts, dead letters).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from cairn.crypto import keyring
from cairn.device_store import Store
from cairn.errors import InvalidInput, NotFound, RemoteUnreachable, SyncError
from cairn.model import iso
from cairn.remotes.base import Remote
from cairn.replication import Conflict, SyncRules
from cairn.store import outbox
from cairn.sync.channel import BATCH_BYTES, Channel, Progress
from cairn.sync.envelopes import Envelopes
from cairn.sync.pull import PullReport, pull
from cairn.sync.push import PushReport, push
from cairn.sync.trust import keyring_problem


class Syncer(Channel):
    """Sync one store with one remote under selective-sync rules."""

    def __init__(
        self,
        store: Store,
        remote: Remote,
        keys: keyring.Unlocked | None,
        rules: SyncRules | None = None,
        batch_bytes: int = BATCH_BYTES,
        batch_size: int = 5000,
        page_size: int = 5000,
    ) -> None:
        self.store = store
        super().__init__(
            store.sync_state,
            remote,
            Envelopes(remote, keys, store),
            rules,
            batch_bytes,
            batch_size,
            page_size,
        )

    def push(self, progress: Progress | None = None) -> PushReport:
        """Send every pending change; returns what happened (raises on transport failures)."""
        return push(self, progress)

    def pull(self, progress: Progress | None = None, wait: float = 0.0) -> PullReport:
        """Apply everything the remote has after this device's cursor."""
        return pull(self, progress, wait)

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
        return self.state.conflicts()

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
        return self.state.dead_letters()

    def retry_dead_letters(self) -> int:
        """Queue refused pushes again (after fixing their cause) and clear the list."""
        return self.state.requeue_dead_letters(self.device_id)

    def close(self) -> None:
        self.closed = True
        self.remote.close()


def local_status(store: Store) -> dict[str, Any]:
    """What this device knows of its sync without asking the remote (``keyring``: why the
    remote's newest keyring version is not the one in use, if it is not)."""
    device = store.device_id()
    problem = keyring_problem(store)
    local = store.sync_state.local()
    return {
        "device_id": device,
        "keyring": problem,
        "pending": local["pending"],
        "dead_letters": local["dead_letters"],
        "conflicts": local["conflicts"],
        "cursor": local["cursor"],
        "last_push_at": _iso(local["last_push_at"]),
        "last_pull_at": _iso(local["last_pull_at"]),
    }


def _iso(ms: int | None) -> str | None:
    return iso(ms) if ms else None
