"""An object remote's snapshots: every log's mutations up to a version vector, in a few parts."""

from __future__ import annotations

import secrets
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from obstore.exceptions import AlreadyExistsError

from cairn.errors import CryptoError, RemoteConflict, RemoteUnreachable, SyncError
from cairn.protocol import WireMutation
from cairn.remotes.objects.blobs import Blobs
from cairn.remotes.objects.format import (
    FORMAT,
    NUMBER_DIGITS,
    NUMBERED,
    dumps,
    now_ms,
    pack,
    parse_json,
    unpack,
    whole_number,
)
from cairn.remotes.objects.logs import Gap

PART_SIZE = 5000  # mutations per snapshot part
Entry = tuple[int, int, WireMutation]
"""A mutation in a snapshot: its batch, its index in the batch, and itself."""


@dataclass
class Snapshot:
    """A compaction's manifest: every mutation of each device's log up to ``covers[device]``."""

    number: int
    covers: dict[str, int]
    parts: list[str]
    mutations: int
    created_at: int
    entries: dict[str, list[Entry]] = field(default_factory=dict)
    """Per device, (batch, index, mutation) in log order; filled when first read."""
    loaded: bool = False


class Snapshots:
    """``snapshots/<n>`` (a sealed manifest) and ``snapshots/<n>-<token>/<part>`` (its parts)."""

    def __init__(self, blobs: Blobs) -> None:
        self.blobs = blobs
        self._snapshot: Snapshot | None = None
        self.looked_at: float | None = None
        """When the latest snapshot was last looked for (None: never)."""

    def latest(self, refresh: bool = False) -> Snapshot | None:
        """The newest snapshot's manifest (its parts are read when first needed)."""
        if not refresh and self.looked_at is not None:
            return self._snapshot
        self.looked_at = time.monotonic()
        url = self.blobs.url
        for _attempt in range(3):
            names = sorted(
                (n for n in self.blobs.children("snapshots/")[0] if NUMBERED.fullmatch(n)), key=int
            )
            if not names:
                self._snapshot = None
                return None
            number = int(names[-1])
            if self._snapshot is not None and self._snapshot.number == number:
                return self._snapshot
            path = f"snapshots/{names[-1]}"
            try:
                data = parse_json(self.blobs.unframe(path, self.blobs.get(path)))
                parts = data["parts"]
                if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
                    raise ValueError("its parts are not a list of names")
                self._snapshot = Snapshot(
                    number,
                    {str(d): whole_number(n) for d, n in data["covers"].items()},
                    parts,
                    whole_number(data["mutations"]),
                    whole_number(data["created_at"]),
                )
            except FileNotFoundError:
                continue  # replaced by a newer one meanwhile
            except (
                ValueError,
                KeyError,
                TypeError,
                AttributeError,
                CryptoError,
                zlib.error,
            ) as exc:
                raise SyncError(f"{path} in {url} is damaged: {exc}") from exc
            return self._snapshot
        raise RemoteUnreachable(f"the snapshots in {url} keep changing; retry in a moment")

    def entries(self, snapshot: Snapshot, device: str) -> list[Entry]:
        """The device's mutations in ``snapshot`` (its parts read on first use)."""
        if not snapshot.loaded:
            entries: list[Entry] = []
            for part in snapshot.parts:
                path = f"snapshots/{part}"
                try:
                    mutations, at = unpack(self.blobs.open(path, self.blobs.get(path)), 2)
                    entries.extend((a[0], a[1], m) for a, m in zip(at, mutations, strict=True))
                except FileNotFoundError:
                    raise Gap(device, 0) from None  # replaced by a newer snapshot meanwhile
                except (ValueError, TypeError, struct.error, CryptoError, zlib.error) as exc:
                    raise SyncError(f"{path} in {self.blobs.url} is damaged: {exc}") from exc
            snapshot.entries = _by_device(entries)
            snapshot.loaded = True
        return snapshot.entries.get(device, [])

    def write(
        self,
        previous: Snapshot | None,
        covers: dict[str, int],
        entries: list[Entry],
        progress: Callable[[str, int, int], None],
    ) -> Snapshot:
        """Write the snapshot after ``previous``: its parts, then its manifest (only if no
        other compaction wrote that number first: RemoteConflict then)."""
        number = (previous.number if previous else 0) + 1
        folder = f"snapshots/{number:0{NUMBER_DIGITS}d}-{secrets.token_hex(8)}"
        parts: list[str] = []
        for start in range(0, len(entries), PART_SIZE):
            path = f"{folder}/{len(parts) + 1:06d}"
            chunk = entries[start : start + PART_SIZE]
            body = pack([m for _b, _i, m in chunk], [[b, i] for b, i, _m in chunk])
            self.blobs.put(path, self.blobs.seal(path, body), create=True)
            parts.append(path[len("snapshots/") :])
            progress("writing", start + len(chunk), len(entries))
        manifest = {
            "format": FORMAT,
            "covers": covers,
            "parts": parts,
            "mutations": len(entries),
            "created_at": now_ms(),
        }
        path = f"snapshots/{number:0{NUMBER_DIGITS}d}"
        try:
            self.blobs.put(path, self.blobs.frame(path, dumps(manifest)), create=True)
        except AlreadyExistsError:
            self.blobs.delete([f"snapshots/{p}" for p in parts])
            raise RemoteConflict("another compaction wrote a snapshot at the same time") from None
        made = Snapshot(number, covers, parts, len(entries), now_ms())
        made.entries, made.loaded = _by_device(entries), True
        self._snapshot = made
        return made


def snapshot_number(name: str) -> int:
    """The snapshot an object under ``snapshots/`` belongs to (its manifest or a part)."""
    head = name.split("/", 1)[0].split("-", 1)[0]
    return int(head) if NUMBERED.fullmatch(head) else 1 << 62


def _by_device(entries: list[Entry]) -> dict[str, list[Entry]]:
    grouped: dict[str, list[Entry]] = {}
    for entry in entries:
        grouped.setdefault(entry[2].device_id, []).append(entry)
    for device_entries in grouped.values():
        device_entries.sort(key=lambda e: (e[0], e[1]))
    return grouped
