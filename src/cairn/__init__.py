"""Cairn: local-first long-term memory for AI coding agents.

>>> import cairn
>>> with cairn.open() as store:
...     store.remember("We deploy with blue-green releases", kind="decision")
...     hits = store.recall("how do we ship to production?")

This module only re-exports the public API; ``cairn.wiring`` composes it. Importing
``cairn`` (or ``cairn.model``, ``cairn.errors``) loads no embedder, remote or worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cairn.errors import CairnError
from cairn.model import Filters, Hit, Memory, RememberResult
from cairn.version import __version__

if TYPE_CHECKING:
    from cairn.device_store import Store
    from cairn.memory_rules import NewMemory
    from cairn.wiring import open

__all__ = [
    "CairnError",
    "Filters",
    "Hit",
    "Memory",
    "NewMemory",
    "RememberResult",
    "Store",
    "__version__",
    "open",
]

_LAZY = {"open": "cairn.wiring", "Store": "cairn.device_store", "NewMemory": "cairn.memory_rules"}


def __getattr__(name: str) -> Any:
    """``cairn.open``, ``cairn.Store`` and ``cairn.NewMemory`` load the store on first use."""
    home = _LAZY.get(name)
    if home is None:
        raise AttributeError(f"module 'cairn' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
