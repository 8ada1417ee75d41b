"""A sync worker's status: the record it keeps in the store, and how any process reads it.

The lease holder's status (phase, reason code, message, last success) is kept in the store
(``cairn.store.sync_state.WORKER``), so ``cairn sync status`` in another process shows what
the worker is doing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from cairn.device_store import Store
from cairn.model import iso

PHASES = ("idle", "pushing", "pulling", "healthy", "backoff", "degraded", "disabled")


@dataclass
class WorkerStatus:
    """What a worker is doing (``phase``, one of ``PHASES``), why, and since when."""

    phase: str = "idle"
    reason: str | None = None
    message: str = "starting"
    owner: str = ""
    last_success_at: int | None = None
    retry_at: int | None = None
    updated_at: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("last_success_at", "retry_at", "updated_at"):
            data[key] = iso(data[key]) if data[key] else None
        return data


def read_status(store: Store) -> dict[str, Any]:
    """What the store's sync worker last reported, whether it still holds the lease, and the
    pending and dead-letter counts (for ``cairn sync status`` in any process)."""
    raw, live, pending, dead = store.sync_state.worker()
    status = WorkerStatus(**json.loads(raw)) if raw else WorkerStatus(message="no worker has run")
    running = live is not None and live.owner == status.owner
    data = status.to_dict()
    if not running and status.phase != "disabled":
        data.update(phase="idle", message="no sync worker is running for this store")
    return {**data, "worker_running": running, "pending": pending, "dead_letters": dead}
