"""Read positions in an object remote: the cursors a pull gives out, and each device's record."""

from __future__ import annotations

import base64
import binascii
import json
import time
import zlib
from typing import Any

from cairn.errors import CryptoError, InvalidInput
from cairn.remotes.objects.blobs import Blobs
from cairn.remotes.objects.format import now_ms, parse_json, whole_number

PUBLISH_EVERY = 5.0
"""Seconds between two writes of a device's read position to its record."""
WHOLE = 1 << 30
"""A position's index meaning "the whole batch"."""

Position = dict[str, list[int]]
"""A version vector: for each device, the batch and the index in it read up to."""


def read_cursor(cursor: str | None) -> tuple[Position, int]:
    """The position and the count of mutations read that a cursor holds (None: the start)."""
    if cursor is None:
        return {}, 0
    try:
        data = parse_json(base64.urlsafe_b64decode(cursor.encode("ascii")))
        if not isinstance(data["at"], dict):
            raise TypeError("its positions are not an object")
        position = {
            str(device): [whole_number(number), whole_number(index)]
            for device, (number, index) in data["at"].items()
        }
        return position, whole_number(data["n"])
    except (ValueError, TypeError, KeyError, IndexError, binascii.Error) as exc:
        raise InvalidInput(f"cursor {cursor!r} is not one this remote gave out") from exc


def write_cursor(position: Position, count: int) -> str:
    """The cursor for a position and a count of mutations read."""
    data = json.dumps({"at": position, "n": count}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(data.encode()).decode("ascii")


class DeviceRecords:
    """``devices/<device>``: each device's name and how far it has read every log, sealed and
    written by that device only."""

    def __init__(self, blobs: Blobs, device_id: str | None) -> None:
        self.blobs = blobs
        self.device_id = device_id
        self._name: str | None = None
        self._published: tuple[str, float] | None = None  # (position, when)

    def register(self, device_id: str, name: str) -> None:
        self._name = name
        self._write(device_id, {"name": name})

    def remove(self, device_id: str) -> None:
        self.blobs.delete([f"devices/{device_id}"])

    def names(self) -> dict[str, str]:
        """Each device's name, from its record (sealed: the keys must be open); a record that
        does not open is left out (and listed under ``skipped_objects``)."""
        self.blobs.keys()
        names: dict[str, str] = {}
        for device in self.blobs.names("devices/"):
            record = self.read(device)
            if record is not None and isinstance(record.get("name"), str):
                names[device] = record["name"]
        return names

    def read(self, device_id: str) -> dict[str, Any] | None:
        """A device's record; None when it has none, or one that does not open."""
        path = f"devices/{device_id}"
        try:
            data = parse_json(self.blobs.unframe(path, self.blobs.get(path)))
        except FileNotFoundError:
            return None
        except (ValueError, CryptoError, zlib.error) as exc:
            self.blobs.skipped[path] = str(exc)
            return None
        return data if isinstance(data, dict) else None

    def _write(self, device_id: str, record: dict[str, Any]) -> None:
        path = f"devices/{device_id}"
        record = {**record, "updated_at": now_ms()}
        self.blobs.put(path, self.blobs.frame(path, json.dumps(record).encode()), create=False)

    def publish(self, cursor: str, position: Position, every: float, force: bool = False) -> None:
        """Record how far this device has read (the cursor it pulls from has been applied), so
        a compaction knows which batches every device has passed; at most every ``every``
        seconds (unless ``force``), and only when it moved: a record that already holds this
        position is not written again, so a folder in a git repository is left unmodified by
        a sync that brought nothing."""
        if self.device_id is None or self.blobs.frames is None:
            return
        last = self._published
        now = time.monotonic()
        if last is not None and (last[0] == cursor or (not force and now - last[1] < every)):
            return
        if last is None:  # this process has not written it yet: what does it hold?
            record = self.read(self.device_id)
            if self._name is None:
                self._name = str(record.get("name") or self.device_id) if record else self.device_id
            if record is not None and record.get("at") == position:
                self._published = (cursor, now)
                return
        self._write(self.device_id, {"name": self._name, "at": position})
        self._published = (cursor, now)

    def read_up_to(self, device: str) -> int:
        """The batch of its own log this device last said it had read (its record is written by
        it alone, so it is current here even when a synced folder delivers a compaction's
        removals before its snapshot: a number removed is then still not handed out again)."""
        if device != self.device_id:
            return 0
        record = self.read(device) or {}
        try:
            return whole_number(record.get("at", {}).get(device, [0])[0])
        except (AttributeError, TypeError, ValueError, IndexError, KeyError):
            return 0

    def readers(self, stale_after: float) -> dict[str, Position]:
        """Each device's published read position, for devices that read recently."""
        since = now_ms() - int(stale_after * 1000)
        found: dict[str, Position] = {}
        for device in self.blobs.names("devices/"):
            record = self.read(device)
            try:
                if (
                    not record
                    or "at" not in record
                    or whole_number(record.get("updated_at", 0)) < since
                ):
                    continue
                found[device] = {
                    str(d): [whole_number(a[0]), whole_number(a[1])]
                    for d, a in record["at"].items()
                }
            except (AttributeError, TypeError, ValueError, IndexError, KeyError):
                continue  # not a position this version wrote: it holds nothing back
        return found
