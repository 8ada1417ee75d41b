"""News between the processes of one host sharing an embedded SQLite file: a datagram each.

Each process binds a Unix datagram socket named by its pid (and a random suffix) in a folder
beside the database, and announces a push by sending the workspace id to every other socket
there. Datagrams are small and local, so a wake-up takes well under a millisecond. A socket
whose process died refuses the datagram and is removed. Linux keeps only a few datagrams queued
per socket (``net.unix.max_dgram_qlen``, often 10), so ids waiting for a busy peer are batched
and retried a moment later; past ``MAX_PENDING`` of them the peer is told to wake everyone.
Addresses go through ``/proc/self/fd`` so a deep data folder never exceeds the 108-byte limit of
a socket path.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import socket
from pathlib import Path

from cairn.server.notify import Notifier

EVERYONE = "*"
"""The datagram that wakes every waiter of the receiving process."""
MAX_PENDING = 1000
"""Workspace ids kept for a peer that cannot take them yet; past that it is told ``EVERYONE``."""
RETRY = 0.005
"""Seconds before sending again to a peer whose queue was full."""
DATAGRAM = 4096
"""Largest datagram sent or read: ids are joined by newlines up to this size."""

_log = logging.getLogger("cairn.server")


class UnixNotifier(Notifier):
    """``Notifier`` for the processes sharing one SQLite database on one host."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self._name = f"{os.getpid()}.{secrets.token_hex(4)}"
        self._dir = -1
        self._sock: socket.socket | None = None
        self._pending: dict[str, set[str]] = {}
        self._retry: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        await super().start()
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._dir = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(self._address(self._name))
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._receive)

    async def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
            self._unlink(self._name)
        if self._dir >= 0:
            os.close(self._dir)
            self._dir = -1

    def _announce(self, message: str) -> None:
        if self._sock is None:
            return
        for peer in os.listdir(self._dir):
            if peer != self._name:
                self._pending.setdefault(peer, set()).add(message)
        if self._retry is None:  # else the retry soon sends these too
            self._flush()

    def _receive(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            for message in data.decode(errors="replace").split("\n"):
                if message == EVERYONE:
                    self.wake_all()
                else:
                    self._heard(message)

    def _flush(self) -> None:
        """Send each peer its pending ids; retry soon for peers whose queue is full."""
        self._retry = None
        assert self._sock is not None
        for peer in list(self._pending):
            ids = self._pending[peer]
            if len(ids) > MAX_PENDING:
                ids = self._pending[peer] = {EVERYONE}
            try:
                for chunk in _chunks(ids):
                    self._sock.sendto(chunk.encode(), self._address(peer))
                    ids.difference_update(chunk.split("\n"))
            except BlockingIOError:
                continue  # its queue is full: the rest go at the retry
            except OSError as exc:  # gone: its process stopped or died
                if exc.errno == errno.ECONNREFUSED:
                    self._unlink(peer)
                elif exc.errno != errno.ENOENT:
                    _log.warning("cannot wake the server process at %s: %s", peer, exc)
            del self._pending[peer]
        if self._pending:
            self._retry = asyncio.get_running_loop().call_later(RETRY, self._flush)

    def _address(self, name: str) -> str:
        return f"/proc/self/fd/{self._dir}/{name}"

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self._dir)
        except FileNotFoundError:
            pass


def announce_once(folder: Path, messages: list[str]) -> None:
    """Tell every server process of the data folder ``messages`` from a process that serves
    none (the CLI revoking a key): a datagram each, waiting up to a second for a full queue."""
    if not folder.is_dir():
        return  # no server ever ran here
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for peer in os.listdir(folder_fd):
                for chunk in _chunks(set(messages)):
                    try:
                        sock.sendto(chunk.encode(), f"/proc/self/fd/{folder_fd}/{peer}")
                    except OSError as exc:  # stopped, died, or too busy to hear: its TTL holds
                        _log.debug("cannot tell the server process at %s: %s", peer, exc)
        finally:
            os.close(folder_fd)


def _chunks(ids: set[str]) -> list[str]:
    """``ids`` joined by newlines into datagrams of at most ``DATAGRAM`` bytes."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for workspace_id in sorted(ids):
        if current and size + len(workspace_id) + 1 > DATAGRAM:
            chunks.append("\n".join(current))
            current, size = [], 0
        current.append(workspace_id)
        size += len(workspace_id) + 1
    if current:
        chunks.append("\n".join(current))
    return chunks
