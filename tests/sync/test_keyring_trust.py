"""A device that cannot authenticate the remote's keyring keeps syncing with its last good copy
and says why (``keyring_untrusted``), until a device with the master key publishes a new one."""

from __future__ import annotations

import json
from pathlib import Path

import obstore
from obstore.store import LocalStore

from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.remotes.objects import ObjectRemote
from cairn.store.db import Database
from cairn.sync.engine import Syncer, local_status
from cairn.sync.keys import join, open_keys

from .conftest import FAST_KDF, PASSPHRASE


def test_a_device_keeps_its_last_good_keyring_and_reports_why(
    tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    folder = tmp_path / "remote"
    url = folder.as_uri()

    def remote() -> ObjectRemote:
        return ObjectRemote(LocalStore(folder, mkdir=True), url)

    keys, _ = join(remote(), PASSPHRASE, kdf=FAST_KDF)
    with Store(Database(tmp_path / "a.db"), embedder, project="p") as store:

        def sync_round() -> dict[str, object]:
            opened = remote()
            syncer = Syncer(store, opened, open_keys(store, opened, keys.master, keys.keyring_id))
            return syncer.now()

        store.remember("Written before the keyring was replaced")
        sync_round()
        assert local_status(store)["keyring"] is None
        # Someone with write access to the folder removes every keyring version it finds and
        # writes one of their own.
        bucket = LocalStore(folder)
        for item in obstore.list(bucket, prefix="keyring/").collect():
            obstore.delete(bucket, item["path"])
        forged = {"blob": "bm90IGEga2V5cmluZw==", "revoked_key_ids": [1]}
        obstore.put(bucket, "keyring/00000005", json.dumps(forged).encode())

        store.remember("Written after the keyring was replaced")
        report = sync_round()
        assert report["push"]["pushed"] == 1 and report["push"]["dead_lettered"] == 0  # type: ignore[index]
        problem = local_status(store)["keyring"]
        assert problem["reason"] == "keyring_untrusted"
        assert (problem["version"], problem["using"]) == (5, 1)
        assert "version 5" in problem["message"]
        # A device with the master key publishes a signed version: the reason goes away.
        opened = remote()
        syncer = Syncer(store, opened, open_keys(store, opened, keys.master, keys.keyring_id))
        syncer.envelopes.rotate()
        assert remote().get_keyring().version == 6  # type: ignore[union-attr]
        sync_round()
        assert local_status(store)["keyring"] is None
