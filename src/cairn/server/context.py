"""What every route of the sync server shares: its storage, settings and in-process state."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from cairn.embedding.base import Embedder
from cairn.server.failures import AuthFailures
from cairn.server.hosted import Hosted
from cairn.server.key_cache import KeyCache
from cairn.server.limits import RateLimiter
from cairn.server.metrics import Metrics
from cairn.server.notify import Notifier
from cairn.server.retention import Compactor
from cairn.server.seen import LastSeen
from cairn.server.storage import ServerStorage

MiB = 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    """Tunables of one server process (the CLI sets them from its options)."""

    max_body: int = 8 * MiB
    """Largest request body accepted; bigger pushes get 413 and are split by the client."""
    rate_limit: float = 200.0
    """Requests per second per API key on average; 0 turns rate limiting off."""
    rate_burst: float = 400.0
    """Requests per API key allowed in a burst above the average."""
    touch_interval: float = 60.0
    """Seconds between the batched writes of keys' last use and devices' last pull (a key or
    device new to the process is written within a second): ``cairn.server.seen``."""
    key_cache_ttl: float = 60.0
    """Seconds a cached API key goes at most without being read again (in one statement for
    all of them), should news of its revocation from another process be lost; 0 turns the
    cache off. Revocations reach every process through the notifier at once."""
    recheck: float = 30.0
    """Seconds between a waiting long-poll's safety re-reads of the database. News of pushes
    (from this process and, through the notifier, from the others) wakes it at once; the re-read
    only bounds how late a lost notification is noticed."""
    auth_failure_rate: float = 1.0
    """Failed authentications per second allowed per client address and per key id on average
    (then 429); 0 turns the limit off. Requests with a valid key are never counted."""
    auth_failure_burst: float = 20.0
    """Failed authentications per client address and per key id allowed in a burst."""
    auth_audit_interval: float = 60.0
    """Seconds between a key's ``auth_failed`` audit entries (and the failure log summaries)."""
    auth_failure_tracked: int = 10_000
    """Client addresses, and key ids, whose failures are tracked at most (oldest forgotten)."""
    compact_interval: float = 3600.0
    """Seconds between compactions of the logs of workspaces with a retention policy; 0: none
    (`cairn server workspace compact` still runs one)."""
    workers: int = 1
    """Worker processes serving (shown by the admin console's health page)."""
    console_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    """Signs the admin console's session cookies; one per server run (shared by its workers),
    so a restart signs everyone out."""
    console_session: float = 8 * 3600.0
    """Seconds an admin console session lasts after signing in."""
    operator_workspace: str | None = None
    """The workspace whose admin keys operate the whole server in the admin console (list and
    create workspaces, set quotas, open any workspace); None: every console session sees only
    its own key's workspace."""


@dataclass
class ServerContext:
    storage: ServerStorage
    settings: ServerSettings
    embedder: Embedder | None = None
    """Hosted workspaces' embedder (None: the bundled model, loaded on first use)."""
    metrics: Metrics = field(default_factory=Metrics)
    notifier: Notifier = field(default_factory=Notifier)
    limiter: RateLimiter = field(init=False)
    failures: AuthFailures = field(init=False)
    key_cache: KeyCache = field(init=False)
    seen: LastSeen = field(init=False)
    hosted: Hosted = field(init=False)
    compactor: Compactor = field(init=False)

    def __post_init__(self) -> None:
        self.hosted = Hosted(self.storage, self.embedder)
        self.key_cache = KeyCache(self.storage, self.settings.key_cache_ttl)
        self.notifier.keys_changed = self.key_cache.forget
        self.limiter = RateLimiter(self.settings.rate_limit, self.settings.rate_burst)
        self.failures = AuthFailures(
            self.storage,
            self.metrics,
            self.settings.auth_failure_rate,
            self.settings.auth_failure_burst,
            self.settings.auth_audit_interval,
            self.settings.auth_failure_tracked,
            self.key_cache,
        )
        self.compactor = Compactor(self.storage, self.settings.compact_interval)
        self.seen = LastSeen(self.storage, self.settings.touch_interval)

    def key_revoked(self, key_id: str) -> None:
        """Key ``key_id`` was revoked: refused from now on in this process, and in the others
        once the notifier's news arrives. Any thread."""
        self.key_cache.forget(key_id)
        self.notifier.announce_key(key_id)


def now_ms() -> int:
    return int(time.time() * 1000)
