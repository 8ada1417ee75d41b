"""Limits that protect the server: request rate per key, request body size, write frequency."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Hashable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cairn.errors import PayloadTooLarge, RateLimited

# An oversized body is read and dropped up to this size before the 413 is sent, so a client
# still uploading sees the answer instead of a reset connection; beyond it the server hangs up.
DRAIN_LIMIT = 64 * 1024 * 1024


class RateLimiter:
    """A token bucket per key: ``rate`` requests per second on average, bursts up to ``burst``.

    ``rate`` 0 turns the limit off.
    """

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._buckets: dict[Hashable, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key: Hashable) -> None:
        """Take one token for ``key``, or raise RateLimited saying when one will be free."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                wait = (1 - tokens) / self.rate
                raise RateLimited(
                    f"too many requests with this API key (limit {self.rate:g}/s); "
                    f"retry after {wait:.2f} s",
                    retry_after=wait,
                )
            self._buckets[key] = (tokens - 1, now)


class Throttle:
    """Says yes at most once per ``interval`` seconds per key (for bookkeeping writes)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[Hashable, float] = {}
        self._lock = threading.Lock()

    def due(self, key: Hashable) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                return False
            self._last[key] = now
            return True


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
