"""The local HTTP API (``cairn serve``): ``create_app(store)`` builds it, ``run`` serves it."""

from __future__ import annotations

from cairn.api.app import DEFAULT_HOST, DEFAULT_PORT, create_app, run

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "create_app", "run"]
