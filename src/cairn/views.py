"""Answers about memories as JSON-ready dicts, one shape for every edge that answers JSON.

The local HTTP API, the sync server's hosted routes and the CLI's ``--json`` build their answers
here from the records' own ``to_dict`` forms, so one memory reads the same from each of them;
``cairn.agent_text`` is the compact text form the MCP tools answer with (no I/O in either).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cairn.model import Hit, Memory, Relation
from cairn.version import __version__


def health() -> dict[str, str]:
    """Both HTTP apps' liveness answer."""
    return {"status": "ok", "version": __version__}


def recalled(hits: Sequence[Hit]) -> dict[str, Any]:
    """Recall's answer: the hits, best first."""
    return {"results": [hit.to_dict() for hit in hits]}


def page(memories: Sequence[Memory], total: int) -> dict[str, Any]:
    """A page of a listing, and how many memories match over all pages."""
    return {"memories": [m.to_dict() for m in memories], "total": total}


def detail(memory: Memory, relations: Sequence[Relation]) -> dict[str, Any]:
    """One memory in full, with the relations from and to it."""
    return {**memory.to_dict(), "relations": [r.to_dict() for r in relations]}
