"""What a push and a pull go through: the store's sync state, the remote, envelopes, rules."""

from __future__ import annotations

from collections.abc import Callable

from cairn.remotes.base import Remote
from cairn.replication import SyncRules
from cairn.store.sync_state import SyncState
from cairn.sync import payload
from cairn.sync.envelopes import Envelopes

BATCH_BYTES = 7 * 1024 * 1024
"""The most a push request carries: under a sync server's default limit (8 MiB, ``cairn server
run --max-body``); a server with a lower one answers 413 and the batch is split."""
Progress = Callable[[int, int], None]
"""progress(done, total): how far a push or pull has come (total may grow during a pull)."""


class Channel:
    """One store's way to one remote under selective-sync rules (``cairn.sync.push`` and
    ``cairn.sync.pull`` carry changes through it).

    Opening it with a new remote or new rules sends everything again and reads the remote from
    the start (``SyncState.retarget``)."""

    def __init__(
        self,
        state: SyncState,
        remote: Remote,
        envelopes: Envelopes,
        rules: SyncRules | None = None,
        batch_bytes: int = BATCH_BYTES,
        batch_size: int = 5000,
        page_size: int = 5000,
    ) -> None:
        self.state = state
        self.remote = remote
        self.envelopes = envelopes
        self.rules = rules or SyncRules()
        self.batch_bytes = batch_bytes
        self.batch_size = batch_size
        self.page_size = page_size
        self.closed = False
        """Set once closed: a long-poll answering afterwards applies nothing."""
        self._scopes: dict[str, str] = {}
        self.device_id = state.retarget(f"{remote.url}#{self.rules.fingerprint()}")

    def scope(self, project: str) -> str:
        """The project's blind scope tag (an HMAC per memory is 4 % of a push, so cached)."""
        tag = self._scopes.get(project)
        if tag is None:
            tag = self._scopes[project] = payload.scope_tag(self.envelopes.scope_key, project)
        return tag
