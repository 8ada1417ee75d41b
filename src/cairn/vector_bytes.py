"""Vectors as bytes: little-endian float32 as stored, at the float16 precision payloads carry.

A payload carries a memory's vector as float16 (half the bytes of float32). So that every
replica holds the same vector, a device rounds each vector it makes to float16 precision before
storing it (still as float32, the type the index searches): what it sends is then exactly what
it keeps. Rounding a unit vector to float16 moves each value by at most 2^-11 of itself; the
cosine of the model's vectors with a query moved by 6e-5 at most, which left search results as
they were (``bench/bench_vector_precision.py``; docs/sync.md, "Payloads"). A vector with a
value float16 cannot hold (beyond ±65504, or not a number) is kept and sent as float32, as is.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FLOAT16, FLOAT32 = 2, 4
"""A vector's element width in bytes: what a payload says its vector is made of."""


HALF_MAX = 65504.0
"""The largest finite float16."""


def _halved(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float16] | None:
    """The values as float16, or None when one is beyond float16's range or not a number (a
    NaN fails the comparison too). One pass for the check: no floating-point error state to
    set, which cost more than the conversion."""
    if values.size and not float(np.abs(values).max()) <= HALF_MAX:
        return None
    return values.astype("<f2")


def stored(vector: npt.ArrayLike) -> bytes:
    """A vector as the store keeps it: float32 bytes, rounded to float16 precision."""
    values = np.ascontiguousarray(vector, dtype="<f4")
    half = _halved(values)
    return (values if half is None else half.astype("<f4")).tobytes()


def to_wire(blob: bytes) -> tuple[int, bytes]:
    """A stored vector (float32 bytes) as a payload carries it: (element width, bytes)."""
    half = _halved(np.frombuffer(blob, dtype="<f4"))
    return (FLOAT32, blob) if half is None else (FLOAT16, half.tobytes())


def from_wire(width: int, data: bytes) -> bytes:
    """Float32 bytes of a vector a payload carried with element ``width``; ValueError when the
    bytes are not whole values of that width."""
    if width == FLOAT32 and len(data) % 4 == 0:
        return data
    if width == FLOAT16 and len(data) % 2 == 0:
        return np.frombuffer(data, dtype="<f2").astype("<f4").tobytes()
    raise ValueError(f"a vector of {len(data)} bytes is not whole values of {width} bytes")
