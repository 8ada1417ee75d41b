"""Every sync server test runs on each storage backend: embedded SQLite and PostgreSQL."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["sqlite", "postgres"])
def server_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
