"""The fault suite's own PostgreSQL: the scenarios SIGKILL it, so it is not the shared one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .processes import PgCluster


@pytest.fixture(scope="session")
def fault_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    cluster = PgCluster(tmp_path_factory.mktemp("fault-postgres") / "data")
    try:
        yield cluster
    finally:
        cluster.stop()
