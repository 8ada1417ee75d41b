"""Cairn: local-first long-term memory for AI coding agents.

>>> import cairn
>>> with cairn.open() as store:
...     store.remember("We deploy with blue-green releases", kind="decision")
...     hits = store.recall("how do we ship to production?")
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from cairn import config, keystore
from cairn.autosync import Worker
from cairn.embedding.onnx import OnnxEmbedder
from cairn.errors import CairnError, InvalidInput, SyncNotConfigured
from cairn.model import Filters, Hit, Memory, RememberResult
from cairn.protocol import E2E
from cairn.remotes.base import Remote
from cairn.remotes.http import HttpRemote
from cairn.service import NewMemory, Store
from cairn.store.db import Database
from cairn.syncing import Syncer
from cairn.workspace_keys import open_keys

try:
    __version__ = version("cairn-memory")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "CairnError",
    "Filters",
    "Hit",
    "Memory",
    "NewMemory",
    "RememberResult",
    "Store",
    "open",
]


def open(  # noqa: A001 - mirrors the builtin on purpose: cairn.open(path)
    path: str | Path | None = None,
    project: str | None = None,
    source: str = "python",
) -> Store:
    """Open (creating if needed) the store at ``path``, default ``$CAIRN_HOME/cairn.db``."""
    settings = config.load(source=source)
    return build(settings, Path(path) if path else None, project)


def build(settings: config.Settings, path: Path | None = None, project: str | None = None) -> Store:
    """Wire a Store from settings: the composition shared by every entry point."""
    db = Database(path or settings.db_path)
    embedder = OnnxEmbedder(settings.model_dir, max_tokens=settings.max_tokens)
    return Store(
        db,
        embedder,
        project=project or config.default_project(),
        source=settings.source,
        near_duplicate=settings.near_duplicate,
    )


def open_remote(url: str, api_key: str | None, device_id: str | None = None) -> Remote:
    """The remote a sync URL names (this release: a Cairn sync server over http(s))."""
    if url.startswith(("http://", "https://")):
        if not api_key:
            raise InvalidInput("a sync server needs an API key: pass --api-key (or CAIRN_API_KEY)")
        return HttpRemote(url, api_key, device_id=device_id)
    raise InvalidInput(f"cannot sync with {url!r}: give the server's http:// or https:// URL")


def build_syncer(settings: config.Settings, store: Store) -> Syncer:
    """Wire a Syncer for ``store`` from the saved sync settings."""
    sync = settings.sync
    if sync.remote is None or (sync.mode == E2E and sync.keyring_id is None):
        raise SyncNotConfigured(
            "sync is not set up on this device; run `cairn sync setup --server URL --api-key KEY`"
        )
    remote = open_remote(sync.remote, sync.api_key, store.device_id())
    keys = None
    try:
        if sync.keyring_id is not None:  # end-to-end encrypted (hosted workspaces have no keys)
            master = sync.master_key or keystore.load(sync.keyring_id)
            keys = open_keys(store, remote, master, sync.keyring_id)
        return Syncer(store, remote, keys, sync.rules)
    except BaseException:
        remote.close()
        raise


def sync_config_version(settings: config.Settings) -> object:
    """Changes whenever the sync settings on disk change (what unblocks a stopped worker)."""
    stamps: list[tuple[int, int] | None] = []
    for path in (settings.home / "keys" / config.SYNC_FILE, settings.home / "config.toml"):
        try:
            stat = path.stat()
            stamps.append((stat.st_mtime_ns, stat.st_size))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


def start_autosync(settings: config.Settings, store: Store, **options: Any) -> Worker:
    """A running background sync worker for ``store`` (it re-reads the settings from disk
    whenever they change, so a fixed configuration takes effect without a restart)."""
    home = settings.home
    environ = dict(os.environ)

    def fresh() -> config.Settings:
        return config.load({**environ, "CAIRN_HOME": str(home)}, settings.source)

    return Worker(
        store,
        lambda: build_syncer(fresh(), store),
        config_version=lambda: sync_config_version(settings),
        **options,
    ).start()
