"""Failed authentications: limited per client address and per key id, audited in aggregate.

A failure (no key, a malformed one, an unknown key id, a wrong secret, a revoked key) takes a
token from its client address's bucket and from its key id's bucket; once either is empty the
failure is answered 429 ``rate_limited`` with ``Retry-After`` instead of 401, which clients
already back off on. Only failures take tokens, and a valid key is checked before any bucket,
so successful requests are never refused here: a key id is public (lists, logs), and a proxy or
NAT puts many clients behind one address, so refusing valid keys would let anyone lock others
out. Secrets are 256-bit random, so guessing them is hopeless anyway; the limits keep a flood
of failures cheap (no database write per failure) and tell clients to slow down.

Failures against a key that exists go to its workspace's audit log as ``auth_failed`` entries,
at most one per key per ``audit_interval`` (the first at once, the rest summed by a periodic
flush), so a flood cannot fill the audit table. All failures are counted in ``/metrics`` and
summed in one server log warning per interval. Every map here is bounded: what an attacker
makes up (addresses, key ids) evicts the oldest entries instead of growing memory.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, NoReturn

from cairn.errors import CairnError, RateLimited
from cairn.server import keys
from cairn.server.limits import RateLimiter
from cairn.server.metrics import Metrics
from cairn.server.storage import ApiKey, ServerStorage

log = logging.getLogger(__name__)

AUDIT_ADDRESSES = 5
"""Client addresses an audit entry names at most (``more_addresses`` says there were others)."""
LOG_ADDRESSES = 1_000
"""Distinct client addresses one log summary counts at most."""


def client_address(host: str | None) -> str:
    """The bucket a client's failures count in: its IPv4 address, or its IPv6 /64 (a subscriber
    usually holds a whole /64, so per-address limits would not hold per /128)."""
    try:
        ip = ipaddress.ip_address(host or "")
    except ValueError:
        return host or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass
class _Count:
    """Failures, how many were answered 429, why, and from where (at most ``cap`` addresses)."""

    cap: int
    failures: int = 0
    limited: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    addresses: Counter[str] = field(default_factory=Counter)
    more_addresses: bool = False
    unaudited: int = 0
    """Failures against keys whose pending tallies were forgotten (over ``capacity`` keys)."""

    def add(self, reason: str, address: str, limited: bool) -> None:
        self.failures += 1
        self.limited += limited
        self.reasons[reason] += 1
        if address in self.addresses or len(self.addresses) < self.cap:
            self.addresses[address] += 1
        else:
            self.more_addresses = True


@dataclass
class _Tally:
    """Failures against one key since its workspace's last ``auth_failed`` audit entry."""

    workspace_id: str
    first_at: int
    count: _Count = field(default_factory=lambda: _Count(AUDIT_ADDRESSES))

    def detail(self) -> dict[str, Any]:
        count = self.count
        return {
            "failures": count.failures,
            "limited": count.limited,
            "reasons": dict(sorted(count.reasons.items())),
            "addresses": sorted(count.addresses),
            "more_addresses": count.more_addresses,
            "since": self.first_at,
        }


class AuthFailures:
    """Authenticates requests; limits, counts and audits the ones that fail (see the module)."""

    def __init__(
        self,
        storage: ServerStorage,
        metrics: Metrics,
        rate: float,
        burst: float,
        audit_interval: float,
        capacity: int,
        finder: keys.KeyFinder | None = None,
    ) -> None:
        self.storage = storage
        self.finder = storage if finder is None else finder
        """Where keys are looked up (the process's key cache; else the storage)."""
        self.metrics = metrics
        self.audit_interval = audit_interval
        self.capacity = capacity
        self.by_address = RateLimiter(rate, burst, capacity)
        self.by_key = RateLimiter(rate, burst, capacity)
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, _Tally] = OrderedDict()
        self._audited: OrderedDict[str, float] = OrderedDict()  # key id -> last entry written
        self._summary = _Count(LOG_ADDRESSES)

    def authenticate(self, authorization: str | None, host: str | None) -> ApiKey:
        """The request's live key; else RateLimited when over a failure limit, AuthFailed
        otherwise."""
        found = keys.check(self.finder, authorization)
        if isinstance(found, ApiKey):
            return found
        self._failed(found, client_address(host))

    def _failed(self, rejection: keys.Rejection, address: str) -> NoReturn:
        wait = self.by_address.take(address)
        if rejection.key_id is not None:
            wait = max(wait, self.by_key.take(rejection.key_id))
        limited = wait > 0
        self.metrics.auth_failed(rejection.reason, limited)
        due = self._count(rejection, address, limited, time.monotonic(), _now_ms())
        if due is not None:
            self._write(*due)
        if limited:
            raise RateLimited(
                "too many failed authentications from this address or with this key id; "
                f"check the API key, then retry after {math.ceil(wait)} s",
                retry_after=wait,
            )
        raise rejection.error

    def _count(
        self, rejection: keys.Rejection, address: str, limited: bool, now: float, at: int
    ) -> tuple[str, _Tally] | None:
        """Adds the failure to the summary and its key's tally; the tally to audit now, if the
        key's last entry is at least ``audit_interval`` old."""
        with self._lock:
            self._summary.add(rejection.reason, address, limited)
            if rejection.key_id is None or rejection.workspace_id is None:
                return None
            key_id = rejection.key_id
            tally = self._pending.pop(key_id, None) or _Tally(rejection.workspace_id, at)
            tally.count.add(rejection.reason, address, limited)
            last = self._audited.get(key_id)
            if last is None or now - last >= self.audit_interval:
                self._audited[key_id] = now
                self._audited.move_to_end(key_id)
                if len(self._audited) > self.capacity:
                    self._audited.popitem(last=False)
                return key_id, tally
            self._pending[key_id] = tally
            while len(self._pending) > self.capacity:
                _, forgotten = self._pending.popitem(last=False)
                self._summary.unaudited += forgotten.count.failures
            return None

    async def run(self) -> None:
        """Flush every ``audit_interval`` seconds until cancelled (the app runs this while it
        serves, then flushes once more with ``final``)."""
        while True:
            await asyncio.sleep(self.audit_interval)
            try:
                await asyncio.to_thread(self.flush)
            except Exception:  # a bug here must not end the flushing for the process's life
                log.exception("flushing the failed authentications' audit failed")

    def flush(self, final: bool = False) -> None:
        """Audit the tallies whose key's last entry is old enough (``final``: all of them) and
        log the summary of every failure since the last flush. Runs every ``audit_interval``
        and when the server stops."""
        now = time.monotonic()
        with self._lock:
            due = [
                (key_id, tally)
                for key_id, tally in self._pending.items()
                if final or now - self._audited.get(key_id, -math.inf) >= self.audit_interval
            ]
            for key_id, _ in due:
                del self._pending[key_id]
                self._audited[key_id] = now
                self._audited.move_to_end(key_id)
            # Oldest first: forget the keys whose last entry no longer holds anything back.
            while self._audited and now - next(iter(self._audited.values())) >= self.audit_interval:
                self._audited.popitem(last=False)
            summary, self._summary = self._summary, _Count(LOG_ADDRESSES)
        for key_id, tally in due:
            self._write(key_id, tally)
        if summary.failures:
            log.warning(_describe(summary))

    def _write(self, key_id: str, tally: _Tally) -> None:
        try:
            self.storage.audit(tally.workspace_id, key_id, "auth_failed", tally.detail(), _now_ms())
        except CairnError as exc:  # the answer (401/429) matters more than its audit entry
            log.warning("could not audit %d failed authentications: %s", tally.count.failures, exc)


def _describe(summary: _Count) -> str:
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(summary.reasons.items()))
    top = ", ".join(f"{address} ({n})" for address, n in summary.addresses.most_common(3))
    more = "+" if summary.more_addresses else ""
    lost = f"; {summary.unaudited} not audited (too many keys at once)" if summary.unaudited else ""
    return (
        f"{summary.failures} failed authentication(s) ({reasons}; {summary.limited} answered "
        f"429) from {len(summary.addresses)}{more} client address(es), most from {top}{lost}"
    )


def _now_ms() -> int:
    return int(time.time() * 1000)
