"""Each device's log of batches in an object remote: listed, read and decoded (cached)."""

from __future__ import annotations

import struct
import zlib
from collections import OrderedDict

from cairn.errors import CryptoError, RemoteUnreachable
from cairn.protocol import WireMutation
from cairn.remotes.objects.blobs import Blobs
from cairn.remotes.objects.format import NUMBER_DIGITS, NUMBERED, batch_path, unpack

_CACHE = 256  # batches kept decoded (they never change)


class Gap(RemoteUnreachable):
    """A log is missing a batch it should have (removed by a compaction since it was listed, or
    not synced here yet); transient when it escapes: the next try reads the remote afresh."""

    def __init__(self, device: str, number: int) -> None:
        super().__init__(f"{batch_path(device, number)} changed while it was read; retry")
        self.device, self.number = device, number


class Logs:
    """The ``log/<device>/<n>`` batches: immutable, each written once by its own device."""

    def __init__(self, blobs: Blobs) -> None:
        self.blobs = blobs
        self._batches: OrderedDict[str, list[WireMutation]] = OrderedDict()

    def devices(self) -> list[str]:
        """The devices that have a log, in name order."""
        return sorted(self.blobs.children("log/")[1])

    def batch_names(self, device: str, after: int = 0) -> list[str]:
        """The device's batch numbers after ``after``, in order (listed from there on, so a
        long history is not listed again each pull; names that are not batch numbers are not
        Cairn's and are left alone)."""
        prefix = f"log/{device}/"
        names = self.blobs.names(prefix, f"{prefix}{after:0{NUMBER_DIGITS}d}" if after else None)
        return [n for n in names if NUMBERED.fullmatch(n) and int(n) > after]

    def batch(self, device: str, name: str) -> list[WireMutation]:
        """One batch, decoded (cached: batches never change); a damaged or foreign one is
        skipped (an empty batch) and recorded."""
        path = f"log/{device}/{name}"
        with_cache = self._batches.get(path)
        if with_cache is not None:
            return with_cache
        try:
            data = self.blobs.get(path)
        except FileNotFoundError:
            raise Gap(device, int(name)) from None  # removed by a compaction since listed
        try:
            mutations, _ = unpack(self.blobs.open(path, data))
            if any(m.device_id != device for m in mutations):
                raise ValueError("it holds another device's mutations")
        except (ValueError, TypeError, struct.error, CryptoError, zlib.error) as exc:
            self.blobs.skipped[path] = str(exc) or type(exc).__name__
            mutations = []
        self.remember(path, mutations)
        return mutations

    def remember(self, path: str, batch: list[WireMutation]) -> None:
        """Keep a batch decoded (one just written, or read)."""
        self._batches[path] = batch
        while len(self._batches) > _CACHE:
            self._batches.popitem(last=False)
