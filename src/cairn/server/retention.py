"""Log retention in a running server: every workspace with a policy, compacted now and then.

What a compaction drops, and why every device still converges, is the storage's rule
(``cairn.server.storage.retention``); this runs it for each workspace whose operator set a
policy (`cairn server workspace set-retention`), every ``interval`` seconds, off the event loop.
Each compaction is one transaction and audited, so several worker processes doing the same
round only find less to do.
"""

from __future__ import annotations

import asyncio
import logging
import time

from cairn.errors import CairnError, NotFound
from cairn.server.storage import Compaction, ServerStorage

log = logging.getLogger("cairn.server")


class Compactor:
    """Compacts the workspaces that have a retention policy, one round every ``interval``."""

    def __init__(self, storage: ServerStorage, interval: float) -> None:
        self.storage = storage
        self.interval = interval
        """Seconds between rounds; 0: never (the CLI's `compact` still runs one)."""

    async def run(self) -> None:
        """Round after round until cancelled (the app runs this while it serves)."""
        if self.interval <= 0:
            return
        while True:
            await asyncio.sleep(self.interval)
            try:
                await asyncio.to_thread(self.round, int(time.time() * 1000))
            except Exception:  # a bug here must not end retention for the process's life
                log.exception("compacting the workspaces' logs failed")

    def round(self, now: int) -> list[Compaction]:
        """Compact every workspace with a policy; what each compaction did. A workspace that
        fails is logged and the others still go."""
        done = []
        for workspace_id, active_days in self.storage.retained():
            try:
                made = self.storage.compact(workspace_id, now, active_days, by="server")
            except NotFound:  # deleted since the list was read
                continue
            except CairnError as exc:
                log.warning("compacting workspace %s failed: %s", workspace_id, exc)
                continue
            if made.removed:
                log.info(
                    "workspace %s compacted: %d superseded changes (%d bytes) dropped, %d kept",
                    workspace_id,
                    made.removed,
                    made.removed_bytes,
                    made.mutations,
                )
            done.append(made)
        return done
