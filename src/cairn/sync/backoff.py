"""How a sync worker takes a failure: permanent or transient, and how long to back off."""

from __future__ import annotations

import random

from cairn.errors import (
    AuthFailed,
    CairnError,
    ConfigError,
    CryptoError,
    Forbidden,
    QuotaExceeded,
    RemoteUnreachable,
    StorageUnsupported,
    SyncNotConfigured,
)

PERMANENT = (
    AuthFailed,
    Forbidden,
    SyncNotConfigured,
    ConfigError,
    CryptoError,
    QuotaExceeded,
    StorageUnsupported,
)
"""Failures no retry can fix: they wait for the settings to change (or a sync asked for)."""


def classify(exc: BaseException) -> tuple[bool, str]:
    """(permanent, reason code) of a failure."""
    if isinstance(exc, RemoteUnreachable):
        return False, "unreachable"
    if isinstance(exc, CairnError):
        return isinstance(exc, PERMANENT), exc.code
    return False, "internal"


class Backoff:
    """Exponential delays with jitter: 1 s, 2 s, 4 s ... up to ``cap``, each drawn from the
    upper half of its step so devices that failed together do not retry together."""

    def __init__(self, base: float = 1.0, cap: float = 300.0, rng: random.Random | None = None):
        self.base, self.cap, self.failures = base, cap, 0
        self._rng = rng or random.Random()

    def next(self, at_least: float = 0.0) -> float:
        step = min(self.cap, self.base * 2**self.failures)
        self.failures += 1
        return float(max(at_least, step * self._rng.uniform(0.5, 1.0)))

    def reset(self) -> None:
        self.failures = 0
