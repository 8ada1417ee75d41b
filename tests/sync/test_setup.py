"""Setting up sync from Python (``cairn.wiring.setup_sync``): two devices join one folder remote."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cairn import config, wiring
from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.errors import InvalidInput, WrongPassphrase
from cairn.settings import Settings
from cairn.store.db import Database

from .conftest import PASSPHRASE


def _device(tmp_path: Path, name: str, embedder: OnnxEmbedder) -> tuple[Settings, Store]:
    home = tmp_path / name
    settings = config.load(
        {**os.environ, "CAIRN_HOME": str(home), "CAIRN_KEY_STORE": "file"}, source="python"
    )
    return settings, Store(Database(home / "cairn.db"), embedder, project="p", source=name)


def test_two_devices_set_up_sync_from_python_and_share_memories(
    tmp_path: Path, embedder: OnnxEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAIRN_KEY_STORE", "file")  # the settings are read again from disk
    folder = (tmp_path / "remote").as_uri()
    settings_a, store_a = _device(tmp_path, "a", embedder)
    settings_b, store_b = _device(tmp_path, "b", embedder)
    with store_a, store_b:
        store_a.remember("the deploy script lives in ops/deploy.sh")
        asked: list[bool] = []

        def ask(creating: bool) -> str:
            asked.append(creating)
            return PASSPHRASE

        first = wiring.setup_sync(
            settings_a, store_a, folder, passphrase=ask, device_name="laptop", create=True
        )
        assert asked == [True]  # the first device makes the keyring
        assert first.recovery_key is not None and first.made_folder == tmp_path / "remote"
        assert first.to_dict()["created_keyring"] and first.pending == 1
        assert first.saved_to.is_file()

        with pytest.raises(WrongPassphrase):
            wiring.setup_sync(settings_b, store_b, folder, passphrase="not the passphrase")
        second = wiring.setup_sync(
            settings_b, store_b, folder, recovery_key=first.recovery_key, device_name="desk"
        )
        assert second.recovery_key is None and second.device_name == "desk"

        assert wiring.sync_now(settings_a, store_a)["push"]["pushed"] == 1
        assert wiring.sync_now(settings_b, store_b)["pull"]["applied"] == 1
        [hit] = store_b.recall("where is the deploy script?", limit=1)
        assert hit.memory.content == "the deploy script lives in ops/deploy.sh"


def test_a_missing_folder_is_made_only_when_asked(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    settings, store = _device(tmp_path, "a", embedder)
    with store, pytest.raises(InvalidInput, match="--create"):
        wiring.setup_sync(settings, store, (tmp_path / "nowhere").as_uri(), passphrase=PASSPHRASE)
    assert not (tmp_path / "nowhere").exists()
