"""How entry points wire Cairn: a store from settings, a remote from a URL, a syncer, autosync."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cairn import config, master_keys, repair
from cairn.device_store import Store
from cairn.errors import CairnError, InvalidInput, SyncNotConfigured
from cairn.protocol import E2E
from cairn.remotes.base import Remote
from cairn.replication import Conflict
from cairn.settings import Settings
from cairn.store.db import Database
from cairn.store.outbox import DeadLetter
from cairn.sync import handoff
from cairn.sync.channel import Progress
from cairn.sync.engine import Syncer, local_status
from cairn.sync.keys import open_keys
from cairn.sync.setup import Passphrase, SyncSetup, folder_to_make, join_workspace
from cairn.sync.status import read_status
from cairn.sync.worker import Worker

if TYPE_CHECKING:
    from cairn.embedding.onnx import OnnxEmbedder


def open(  # noqa: A001 - mirrors the builtin on purpose: cairn.open(path)
    path: str | Path | None = None,
    project: str | None = None,
    source: str = "python",
) -> Store:
    """Open (creating if needed) the store at ``path``, default ``$CAIRN_HOME/cairn.db``."""
    settings = config.load(source=source)
    return build(settings, Path(path) if path else None, project)


def build(settings: Settings, path: Path | None = None, project: str | None = None) -> Store:
    """Wire a Store from settings: the composition shared by every entry point."""
    db = Database(path or settings.db_path)
    return Store(
        db,
        build_embedder(settings),
        project=project or config.default_project(),
        source=settings.source,
        near_duplicate=settings.near_duplicate,
    )


def build_embedder(settings: Settings) -> OnnxEmbedder:
    """The local ONNX embedder (onnxruntime loads here, on first use, not on import)."""
    from cairn.embedding.onnx import OnnxEmbedder

    return OnnxEmbedder(settings.model_dir, max_tokens=settings.max_tokens)


def repair_store(
    settings: Settings,
    force: bool = False,
    pull: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Repair the store of ``settings`` (``cairn.repair.repair``), then, when sync is set
    up and ``pull``, pull from the remote what the damage took; the report as a dict.

    A pull that fails leaves the store repaired: the next pull (any sync) still brings back
    this device's own changes, and ``pull_error`` says why this one did not. Topic chains are
    linked again once every memory is back (``topic_links``: links added or removed).
    """
    report = asdict(repair.repair(settings.db_path, build_embedder(settings), force))
    report.update(pull=None, pull_error=None, pulled_back={"memories": 0, "relations": 0})
    report["topic_links"] = 0
    if report["status"] != "repaired":
        return report
    syncing = sync_configured(config.reload(settings))
    with build(settings) as store:
        if syncing and pull:
            before = store.stats()
            try:
                syncer = build_syncer(config.reload(settings), store)
                try:
                    report["pull"] = asdict(syncer.pull(progress))
                finally:
                    syncer.close()
            except CairnError as exc:
                report["pull_error"] = exc.to_dict()
            after = store.stats()
            rows = ("memories", "forgotten")
            report["pulled_back"] = {
                "memories": sum(after[k] for k in rows) - sum(before[k] for k in rows),
                "relations": after["relations"] - before["relations"],
            }
        if report["pull"] is not None or not syncing:  # every memory that will come is back
            report["topic_links"] = store.relink_topics()
        report["memories_now"] = store.count()
    return report


def open_remote(
    url: str,
    api_key: str | None = None,
    device_id: str | None = None,
    endpoint_url: str | None = None,
    create: bool = False,
) -> Remote:
    """The remote a sync URL names: a Cairn sync server (http(s)://), an S3 or S3-compatible
    bucket (s3://bucket/prefix) or a folder (file:///path; made if missing only if ``create``)."""
    from cairn.remotes import objects
    from cairn.remotes.http import HttpRemote

    if url.startswith(("http://", "https://")):
        if not api_key:
            raise InvalidInput("a sync server needs an API key: pass --api-key (or CAIRN_API_KEY)")
        return HttpRemote(url, api_key, device_id=device_id)
    if url.startswith(("s3://", "file://")):
        return objects.open_url(url, endpoint_url, device_id, create)
    raise InvalidInput(
        f"cannot sync with {url!r}: give a sync server's http(s):// URL, s3://bucket/prefix, "
        "a folder (/path/to/folder, ./folder or file:///path/to/folder)"
    )


FLUSH_SECONDS = 3.0
"""How long a long-running entry point, stopping, may spend pushing what is left in the outbox."""

NOT_CONFIGURED = "sync is not set up on this device; run `cairn sync setup --remote URL`"


def sync_configured(settings: Settings) -> bool:
    sync = settings.sync
    return sync.remote is not None and (sync.mode != E2E or sync.keyring_id is not None)


def build_syncer(settings: Settings, store: Store) -> Syncer:
    """Wire a Syncer for ``store`` from the saved sync settings."""
    sync = settings.sync
    if not sync_configured(settings) or sync.remote is None:
        raise SyncNotConfigured(NOT_CONFIGURED)
    remote = open_remote(sync.remote, sync.api_key, store.device_id(), sync.endpoint_url)
    keys = None
    try:
        if sync.keyring_id is not None:  # end-to-end encrypted (hosted workspaces have no keys)
            master = sync.master_key or master_keys.load(sync.keyring_id)
            keys = open_keys(store, remote, master, sync.keyring_id)
        return Syncer(store, remote, keys, sync.rules)
    except BaseException:
        remote.close()
        raise


@contextmanager
def saved_syncer(settings: Settings, store: Store) -> Iterator[Syncer]:
    """A Syncer for ``store`` from the sync settings saved on disk, closed after use."""
    syncer = build_syncer(config.reload(settings), store)
    try:
        yield syncer
    finally:
        syncer.close()


def device_names(syncer: Syncer, own_name: str) -> dict[str, str]:
    """Device names by id as the remote knows them (none if it cannot say), and this one's."""
    try:
        names = syncer.remote.devices()
    except CairnError:
        names = {}
    return {**names, syncer.device_id: own_name}


def setup_sync(
    settings: Settings,
    store: Store,
    url: str,
    *,
    passphrase: Passphrase = None,
    recovery_key: str | None = None,
    api_key: str | None = None,
    device_name: str | None = None,
    endpoint_url: str | None = None,
    create: bool = False,
    git: bool = False,
) -> SyncSetup:
    """Set up sync for ``store`` with the remote at ``url`` (``cairn.sync.setup``): create or
    unlock the workspace's keyring (``passphrase``, or a function asking for it; or
    ``recovery_key``), register this device and save the sync settings under the home of
    ``settings``; ``create`` makes a missing folder remote, ``git`` marks it for git."""
    name = device_name or settings.sync.device_name
    made = folder_to_make(url, endpoint_url, create, git)
    remote = open_remote(url, api_key, endpoint_url=endpoint_url, create=made is not None)
    try:
        return join_workspace(
            store,
            remote,
            name,
            lambda master, keyring_id, key_store: config.save_sync(
                settings.home,
                remote.url,
                api_key,
                name,
                master,
                keyring_id,
                key_store,
                endpoint_url,
            ),
            passphrase=passphrase,
            recovery_key=recovery_key,
            key_store_choice=settings.sync.key_store_choice,
            rules=settings.sync.rules,
            git_folder=url if git else None,
            made_folder=made,
        )
    finally:
        remote.close()


def sync_config_version(settings: Settings) -> object:
    """Changes whenever the sync settings on disk change (what unblocks a stopped worker)."""
    stamps: list[tuple[int, int] | None] = []
    for path in (settings.home / "keys" / config.SYNC_FILE, settings.home / "config.toml"):
        try:
            stat = path.stat()
            stamps.append((stat.st_mtime_ns, stat.st_size))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


def start_autosync(settings: Settings, store: Store, **options: Any) -> Worker:
    """A running background sync worker for ``store`` (it re-reads the settings from disk
    whenever they change, so a fixed configuration takes effect without a restart)."""
    return Worker(
        store,
        lambda: build_syncer(config.reload(settings), store),
        config_version=lambda: sync_config_version(settings),
        **options,
    ).start()


def sync_now(
    settings: Settings,
    store: Store,
    what: str = "now",
    progress: Progress | None = None,
    wait: float = 0.0,
    timeout: float = 120.0,
) -> dict[str, dict[str, Any]]:
    """Sync now, by this process or, when a worker holds the store's sync lease, by asking it
    (``cairn.sync.handoff.sync_now``); raises SyncNotConfigured before sync is set up."""
    if not sync_configured(config.reload(settings)):
        raise SyncNotConfigured(NOT_CONFIGURED)
    return handoff.sync_now(
        store,
        lambda: build_syncer(config.reload(settings), store),
        what,
        progress=progress,
        wait=wait,
        timeout=timeout,
    )


def compact(
    settings: Settings,
    store: Store,
    stale_days: float = 30.0,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Compact an object-storage remote (``ObjectRemote.compact``): a snapshot for new
    devices, and the batches every device has read removed."""
    from cairn.remotes import objects

    syncer = build_syncer(settings, store)
    try:
        remote = syncer.remote
        if not isinstance(remote, objects.ObjectRemote):
            raise InvalidInput(
                f"{remote.url} is a sync server, which keeps its own log: `cairn sync compact` "
                "is for s3:// and file:// remotes"
            )
        return remote.compact(stale_after=stale_days * 86400, progress=progress)
    finally:
        syncer.close()


def sync_status(settings: Settings, store: Store) -> dict[str, Any]:
    """This device's sync state without asking the remote: where it syncs, what waits to be
    sent, and what the background worker (in any process) last reported."""
    current = config.reload(settings)
    data: dict[str, Any] = {
        "configured": sync_configured(current),
        "remote": current.sync.remote,
        "mode": current.sync.mode if current.sync.remote else None,
        **local_status(store),
        "worker": read_status(store),
    }
    if not data["configured"]:
        data["worker"].update(
            phase="disabled", reason="sync_not_configured", message=NOT_CONFIGURED
        )
    return data


class SyncControl:
    """Sync as a long-running entry point (the MCP server, the local API) offers it: a
    background worker for the store (unless ``autosync`` is off), its status, and sync-now.

    The worker starts even before sync is set up: it reports ``disabled`` and begins syncing
    once ``cairn sync setup`` has saved the settings, without a restart.
    """

    def __init__(self, settings: Settings, store: Store, autosync: bool = True) -> None:
        self.settings, self.store = settings, store
        self.worker = start_autosync(settings, store) if autosync else None

    def status(self) -> dict[str, Any]:
        return sync_status(self.settings, self.store)

    def now(self, timeout: float = 60.0) -> dict[str, dict[str, Any]]:
        return sync_now(self.settings, self.store, timeout=timeout)

    def conflicts(self) -> list[Conflict]:
        """The open conflicts (read from the store: no remote needed)."""
        return self.store.sync_state.conflicts()

    def dead_letters(self) -> list[DeadLetter]:
        """The changes the remote refused, or pulled ones that could not be read."""
        return self.store.sync_state.dead_letters()

    def resolve(self, ref: str, keep: str) -> dict[str, Any]:
        """Settle a conflict (``Syncer.resolve``); the choice syncs like any change."""
        with saved_syncer(self.settings, self.store) as syncer:
            return syncer.resolve(ref, keep)

    def retry_dead_letters(self) -> int:
        """Queue the refused changes again (``Syncer.retry_dead_letters``); how many."""
        with saved_syncer(self.settings, self.store) as syncer:
            return syncer.retry_dead_letters()

    def device_names(self) -> dict[str, str]:
        """Device names by id as the remote knows them (none if it cannot say), and this one's."""
        with saved_syncer(self.settings, self.store) as syncer:
            return device_names(syncer, config.reload(self.settings).sync.device_name)

    def setup(self, url: str, **options: Any) -> SyncSetup:
        """Set this store's sync up (``setup_sync``); the worker starts syncing on its own."""
        return setup_sync(self.settings, self.store, url, **options)

    def close(self) -> None:
        """Stop the worker, pushing what is still in the outbox first (for at most
        ``FLUSH_SECONDS``)."""
        if self.worker is not None:
            self.worker.stop(flush=FLUSH_SECONDS)
