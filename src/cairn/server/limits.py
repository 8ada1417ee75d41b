"""Limits that protect the server: request rate per key and request body size."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cairn.errors import PayloadTooLarge, RateLimited

# An oversized body is read and dropped up to this size before the 413 is sent, so a client
# still uploading sees the answer instead of a reset connection; beyond it the server hangs up.
DRAIN_LIMIT = 64 * 1024 * 1024


class RateLimiter:
    """A token bucket per key: ``rate`` tokens per second on average, bursts up to ``burst``.

    ``rate`` 0 turns the limit off. At most ``capacity`` buckets are kept: past that, the least
    recently used is forgotten (it starts full again if its key comes back), so keys a client
    makes up (addresses, key ids) cannot grow the limiter without bound.
    """

    def __init__(self, rate: float, burst: float, capacity: int = 10_000) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.capacity = max(capacity, 1)
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: Hashable) -> float:
        """Take one token for ``key``: 0.0 when there was one, else the seconds until one is
        free (nothing taken)."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self._buckets[key] = (tokens - 1 if wait == 0.0 else tokens, now)
            if len(self._buckets) > self.capacity:
                self._buckets.popitem(last=False)
            return wait

    def check(self, key: Hashable) -> None:
        """Take one token for ``key``, or raise RateLimited saying when one will be free."""
        wait = self.take(key)
        if wait > 0:
            raise RateLimited(
                f"too many requests with this API key (limit {self.rate:g}/s); "
                f"retry after {wait:.2f} s",
                retry_after=wait,
            )

    def __len__(self) -> int:
        return len(self._buckets)


class BodyLimit:
    """ASGI middleware: bodies over ``max_bytes`` get 413 ``payload_too_large``, unread.

    The limit holds on the declared Content-Length and on the bytes actually received (a
    chunked body declares none), so the app behind it never sees more than ``max_bytes``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._drain(receive, int(declared))
            await self._reject(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                if message.get("more_body", False):
                    await self._drain(receive, size)
                await self._reject(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _drain(self, receive: Receive, size: int) -> None:
        while size <= DRAIN_LIMIT:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            size += len(message.get("body", b""))

    async def _reject(self, send: Send) -> None:
        error = PayloadTooLarge(
            f"the request body is over this server's limit of {self.max_bytes} bytes; "
            "split the batch into smaller pushes"
        )
        body = json.dumps({"error": error.to_dict()}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": error.http_status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive() that hands out ``messages`` first, then defers to the real one."""
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay
