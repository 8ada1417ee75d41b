"""Two devices follow their workspace to another server: exported from one on SQLite, imported
into one on PostgreSQL that takes over the same address, they carry on from their cursors (the
seqs are the same), sending and reading nothing again, and keep converging there."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from cairn.embedding.onnx import OnnxEmbedder
from cairn.memory_rules import NewMemory
from cairn.server import keys, transfer
from cairn.server.app import create_app
from cairn.server.context import ServerSettings, now_ms
from cairn.server.storage import ServerStorage

from ..conftest import server_storage_for
from .conftest import snapshot, sync_all
from .test_sync_over_http import _replica


class Serving:
    """A sync server over ``storage`` on 127.0.0.1:``port`` (0: a free one) until ``stop``."""

    def __init__(self, storage: ServerStorage, embedder: OnnxEmbedder, port: int = 0) -> None:
        app = create_app(storage, ServerSettings(rate_limit=0), embedder)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "no server started"
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def test_two_devices_follow_their_workspace_to_another_server(
    tmp_path: Path, embedder: OnnxEmbedder, request: pytest.FixtureRequest
) -> None:
    old = server_storage_for("sqlite", tmp_path, request)
    new = server_storage_for("postgres", tmp_path, request)
    workspace, token = keys.create_workspace(old, "team", now_ms())
    first = Serving(old, embedder)
    url = f"http://127.0.0.1:{first.port}"
    laptop = _replica(tmp_path, embedder, "laptop", url, token)
    desktop = _replica(tmp_path, embedder, "desktop", url, token, binary=False)
    laptop.store.remember_many([NewMemory(f"laptop: deploy step {i}") for i in range(20)])
    made = desktop.store.remember_many([NewMemory(f"desktop: rollback {i}") for i in range(20)])
    sync_all(laptop, desktop)
    desktop.store.edit(made[0].memory.id, content="desktop: rollback 0, edited")
    sync_all(laptop, desktop)
    before = old.latest_seq(workspace.id)

    # The operator moves the workspace and the address; API keys are issued anew.
    file = io.StringIO("\n".join(transfer.export(old, workspace, now_ms())) + "\n")
    first.stop()
    transfer.read(file, new, now_ms(), by="test")
    _, fresh = keys.issue(new, workspace.id, "moved", ["admin"], now_ms())
    second = Serving(new, embedder, first.port)
    try:
        moved = []
        for device in (laptop, desktop):
            device.remote.close()
            moved.append(_replica(tmp_path, embedder, device.store.db.path.stem, url, fresh))
            device.store.close()
        laptop, desktop = moved
        for device in moved:
            pushed, pulled = device.push(), device.pull()
            assert (pushed.pushed, pulled.received) == (0, 0)
        assert new.latest_seq(workspace.id) == before

        laptop.store.remember("laptop: written after the move")
        desktop.store.forget(made[1].memory.id)
        sync_all(laptop, desktop)
        assert snapshot(laptop.store) == snapshot(desktop.store)
        assert laptop.store.count() == 40
        assert new.latest_seq(workspace.id) == before + 2
    finally:
        for device in (laptop, desktop):
            device.remote.close()
            device.store.close()
        second.stop()
        old.close()
        new.close()
