"""A TCP proxy on 127.0.0.1 that breaks the connections between a device and the sync server.

Each device gets its own proxy (its own network path). The proxy forwards bytes both ways and,
for each HTTP request it sees start (a client chunk after the server last spoke), draws one fault
from its seeded RNG:

- ``delay``: every chunk of that exchange waits 50-400 ms;
- ``drop``: the request (or, drawn half the time, its answer) is swallowed, the connection held
  for a while and then reset, as a dead path looks;
- ``truncate``: the answer is cut at a random byte and the connection closed cleanly (FIN);
- ``reset``: the request or the answer is cut at a random byte and the connection reset (RST);
- ``duplicate``: the request also goes to the server a second time on a connection of its own,
  as a retrying middlebox does, and that answer is thrown away.

Only faults that fired are counted (``faults``). ``calm`` turns the faults off. ``hook`` hears
``("request", n)`` once the n-th request's first bytes went to the server and ``("response", n)``
once its answer's first bytes reached the client: the scenarios kill processes from there, so a
kill lands at a seeded point of the protocol rather than at a moment on the clock.

The proxy knows nothing of HTTP beyond "who spoke last", so it works for any request shape; the
RNG is drawn in the order requests arrive, which one device syncing at a time makes repeatable.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

Hook = Callable[[str, int], None]

KINDS = ("delay", "drop", "truncate", "reset", "duplicate")


@dataclass(frozen=True)
class Rates:
    """The chance that a request meets each fault (the rest pass untouched)."""

    delay: float = 0.08
    drop: float = 0.04
    truncate: float = 0.05
    reset: float = 0.05
    duplicate: float = 0.06
    max_hold: float = 1.0
    """Longest a dropped exchange is held before the reset (keep it under the client's
    timeout to see resets, over it to see timeouts)."""
    on_answer: float = 0.5
    """The share of drops and resets that hit the answer rather than the request."""

    def draw(self, rng: random.Random) -> str | None:
        roll = rng.random()
        for kind in KINDS:
            roll -= getattr(self, kind)
            if roll < 0:
                return kind
        return None


@dataclass
class _Exchange:
    """One request and its answer on a connection, with the fault drawn for them."""

    number: int
    kind: str | None
    delay: float = 0.0
    hold: float = 0.0
    cut: int = 0
    on_answer: bool = False
    """For drop and reset: the fault hits the answer, not the request."""
    request: bytearray = field(default_factory=bytearray)
    sent: int = 0
    answered: int = 0


class _Cut(Exception):
    """This connection ends here: by a reset (a fault fired) or as a side hung up."""

    def __init__(self, reset: bool) -> None:
        super().__init__()
        self.reset = reset


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream_port``, injecting faults drawn from ``rng``."""

    def __init__(self, upstream_port: int, rng: random.Random, rates: Rates | None = None) -> None:
        self.upstream_port = upstream_port
        self.rng = rng
        self.rates = rates or Rates()
        self.calm = False
        self.hook: Hook | None = None
        self.faults: Counter[str] = Counter()
        self.requests = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Close the listener and every open connection, then the proxy's thread."""

        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    # -- one connection -----------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        upstream: asyncio.StreamWriter | None = None
        try:
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            state: dict[str, _Exchange | None] = {"current": None}
            pumps = [
                asyncio.ensure_future(self._client_to_server(reader, upstream, state)),
                asyncio.ensure_future(self._server_to_client(up_reader, writer, state)),
            ]
            try:
                done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
            ended = [p.exception() for p in done if not p.cancelled()]
            if not any(isinstance(e, _Cut) and e.reset for e in ended):
                writer.close()  # one side hung up: so does the other
                upstream.close()
        except OSError:  # the server is down: the client sees its connection reset
            pass
        except asyncio.CancelledError:  # the proxy stops: the connection ends with it
            pass
        finally:
            _reset(writer)
            if upstream is not None:
                _reset(upstream)
            self._tasks.discard(task)  # type: ignore[arg-type]

    def _new_exchange(self) -> _Exchange:
        with self._lock:
            self.requests += 1
            number = self.requests
            kind = None if self.calm else self.rates.draw(self.rng)
            exchange = _Exchange(number, kind)
            if kind == "delay":
                exchange.delay = self.rng.uniform(0.05, 0.4)
            elif kind == "drop":
                exchange.hold = self.rng.uniform(0.1, self.rates.max_hold)
                exchange.on_answer = self.rng.random() < self.rates.on_answer
            elif kind in ("truncate", "reset"):
                exchange.cut = self.rng.randrange(0, 600)
                exchange.on_answer = kind == "truncate" or self.rng.random() < self.rates.on_answer
        return exchange

    def _fired(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] += 1

    def _notify(self, event: str, number: int) -> None:
        hook = self.hook
        if hook is not None:
            hook(event, number)

    async def _client_to_server(
        self,
        reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
        state: dict[str, _Exchange | None],
    ) -> None:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                raise _Cut(reset=False)
            exchange = state["current"]
            if exchange is None or exchange.answered:  # the client speaks first: a new request
                exchange = state["current"] = self._new_exchange()
            if exchange.delay:
                if exchange.sent == 0:
                    self._fired("delay")
                await asyncio.sleep(exchange.delay)
            if exchange.kind == "drop" and not exchange.on_answer:
                self._fired("drop")
                await asyncio.sleep(exchange.hold)
                raise _Cut(reset=True)
            if exchange.kind == "reset" and not exchange.on_answer:
                if exchange.sent + len(chunk) > exchange.cut:
                    upstream.write(chunk[: exchange.cut - exchange.sent])
                    await upstream.drain()
                    self._fired("reset")
                    raise _Cut(reset=True)
            if exchange.kind == "duplicate":
                exchange.request += chunk
            first = exchange.sent == 0
            exchange.sent += len(chunk)
            upstream.write(chunk)
            await upstream.drain()
            if first:
                self._notify("request", exchange.number)

    async def _server_to_client(
        self,
        up_reader: asyncio.StreamReader,
        client: asyncio.StreamWriter,
        state: dict[str, _Exchange | None],
    ) -> None:
        while True:
            chunk = await up_reader.read(65536)
            if not chunk:
                raise _Cut(reset=False)
            exchange = state["current"]
            if exchange is None:  # the server spoke unasked (it never does): pass it on
                client.write(chunk)
                await client.drain()
                continue
            if exchange.delay:
                await asyncio.sleep(exchange.delay)
            if exchange.kind == "drop" and exchange.on_answer:
                self._fired("drop")
                await asyncio.sleep(exchange.hold)
                raise _Cut(reset=True)
            if exchange.kind in ("truncate", "reset") and exchange.on_answer:
                if exchange.answered + len(chunk) > exchange.cut:
                    client.write(chunk[: exchange.cut - exchange.answered])
                    await client.drain()
                    self._fired(exchange.kind)
                    raise _Cut(reset=exchange.kind == "reset")  # truncate: a clean close
            first = exchange.answered == 0
            if first and exchange.kind == "duplicate":  # the request is whole by now
                self._replay(bytes(exchange.request))
            exchange.answered += len(chunk)
            client.write(chunk)
            await client.drain()
            if first:
                self._notify("response", exchange.number)

    def _replay(self, request: bytes) -> None:
        """Send a request again on a fresh connection, and throw its answer away."""
        if not request:
            return
        self._fired("duplicate")

        async def again() -> None:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            except OSError:
                return
            try:
                writer.write(request)
                await writer.drain()
                await asyncio.wait_for(reader.read(65536), timeout=10)
            except (OSError, TimeoutError):
                pass
            finally:
                writer.close()

        task = self._loop.create_task(again())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (SO_LINGER 0) when still open, so the peer sees ECONNRESET."""
    if writer.transport.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()
