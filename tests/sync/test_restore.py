"""After `cairn repair`, pulls bring back this device's own changes until one reads the remote
to its end (a device normally skips its own mutations: it has them already)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.errors import RemoteUnreachable
from cairn.protocol import PullPage
from cairn.remotes.memory import MemoryRemote
from cairn.store import replica
from cairn.store.db import Database
from cairn.store.sync_state import RESTORE
from cairn.sync.engine import Syncer

from .conftest import Replica, keys_for


class FailsOnce(MemoryRemote):
    """A remote whose next pull, once ``fail`` is set, fails as an unreachable one does (the
    fault cannot be made otherwise in a unit test)."""

    fail = False

    def pull(
        self,
        cursor: str | None,
        limit: int = 1000,
        scopes: Sequence[str] | None = None,
        wait: float = 0.0,
    ) -> PullPage:
        if self.fail:
            self.fail = False
            raise RemoteUnreachable("the remote did not answer")
        return super().pull(cursor, limit, scopes, wait)


def _same_device(path: Path, embedder: OnnxEmbedder, device: str, restore: bool) -> Store:
    """A new store file of ``device`` (as `cairn repair` leaves one that lost every row)."""
    store = Store(Database(path), embedder, project="p")
    with store.db.write() as conn:
        replica.set_meta(conn, "device_id", device)
        if restore:
            replica.set_meta(conn, RESTORE, "1")
    return store


def test_own_changes_come_back_only_while_restoring_and_a_failed_pull_keeps_it_so(
    make_replica: Callable[..., Replica], embedder: OnnxEmbedder, tmp_path: Path
) -> None:
    remote = FailsOnce()
    laptop, syncer = make_replica("laptop", via=remote)
    ids = {laptop.remember(f"Decision {i}: deploy on day {i}").memory.id for i in range(9)}
    syncer.push()
    device = syncer.device_id

    with _same_device(tmp_path / "plain.db", embedder, device, restore=False) as plain:
        Syncer(plain, remote, keys_for(remote), page_size=4).pull()
        assert plain.count() == 0  # its own mutations: skipped, as on every ordinary pull

    remote.fail = True
    with _same_device(tmp_path / "repaired.db", embedder, device, restore=True) as repaired:
        restorer = Syncer(repaired, remote, keys_for(remote), page_size=4)
        with pytest.raises(RemoteUnreachable):
            restorer.pull()
        with repaired.db.read() as conn:
            assert replica.get_meta(conn, RESTORE) == "1"  # still to do
        report = restorer.pull()
        assert {m.id for m in repaired.list()} == ids
        assert report.embedded == 0 and report.pages > 1
        with repaired.db.read() as conn:
            assert replica.get_meta(conn, RESTORE) is None  # read to its end: done
