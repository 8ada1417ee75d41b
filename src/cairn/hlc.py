"""Hybrid logical clock: (wall_ms, counter, device_id), totally ordered.

Packed as a fixed-width string so that string order equals clock order, which lets SQLite sort
and compare HLCs directly. Receiving a remote HLC advances the local clock, so clock skew between
devices cannot reorder causality.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeGuard

MAX_COUNTER = 0xFFFF
_PACKED = re.compile(r"[0-9]{13}-[0-9a-f]{4}-[0-9A-Za-z_-]{1,64}")


@dataclass(frozen=True, order=True)
class HLC:
    wall_ms: int
    counter: int
    device_id: str

    def pack(self) -> str:
        return f"{self.wall_ms:013d}-{self.counter:04x}-{self.device_id}"

    @classmethod
    def unpack(cls, text: str) -> HLC:
        try:
            wall, counter, device = text.split("-", 2)
            return cls(int(wall), int(counter, 16), device)
        except ValueError as exc:
            raise ValueError(f"not a packed HLC: {text!r}") from exc


def is_packed(text: object) -> TypeGuard[str]:
    """Whether ``text`` is a clock as ``HLC.pack`` writes it (ASCII digits, no stray newline):
    what a clock read from another device must be before anything parses or compares it."""
    return isinstance(text, str) and _PACKED.fullmatch(text) is not None


def tick(last: HLC, now_ms: int) -> HLC:
    """The clock value for a new local event after ``last``."""
    if now_ms > last.wall_ms:
        return HLC(now_ms, 0, last.device_id)
    if last.counter >= MAX_COUNTER:
        return HLC(last.wall_ms + 1, 0, last.device_id)
    return HLC(last.wall_ms, last.counter + 1, last.device_id)


def observe(last: HLC, remote: HLC, now_ms: int) -> HLC:
    """The local clock after receiving ``remote``: strictly after both."""
    wall = max(last.wall_ms, remote.wall_ms, now_ms)
    if wall == last.wall_ms == remote.wall_ms:
        counter = max(last.counter, remote.counter) + 1
    elif wall == last.wall_ms:
        counter = last.counter + 1
    elif wall == remote.wall_ms:
        counter = remote.counter + 1
    else:
        counter = 0
    if counter > MAX_COUNTER:
        return HLC(wall + 1, 0, last.device_id)
    return HLC(wall, counter, last.device_id)
