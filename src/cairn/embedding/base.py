"""The embedder interface: local ONNX by default, a hosted endpoint later."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    """Maps texts to L2-normalised float32 vectors of ``dim`` columns, tagged with ``model_id``."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def load(self) -> None:
        """Get ready to embed now (servers call it at start so the first request is fast)."""
        ...

    def embed(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> Vectors:
        """One row per text, in order; rows have unit length. ``progress(n)`` after each batch.

        Give bulk work in large calls (thousands of texts): texts of similar length are batched
        together, so a larger call wastes less on padding.
        """
        ...
