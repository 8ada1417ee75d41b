"""Setting up sync on a device: check the remote, create or unlock the keyring, register, save.

``folder_to_make`` checks where sync is to go before anything opens; ``join_workspace`` then
connects this device to the workspace on an opened remote: it creates the end-to-end keyring
(first device) or unlocks it with the passphrase or recovery key, registers the device, keeps
the workspace key (``cairn.master_keys``) and saves the settings through ``save``. Nothing
changes on this device before the keyring is open. ``cairn.wiring.setup_sync`` puts the two
together; ``cairn sync setup`` parses options, asks for the passphrase and prints the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from cairn import master_keys
from cairn.device_store import Store
from cairn.errors import InvalidInput
from cairn.protocol import E2E, HOSTED
from cairn.remotes.base import Remote
from cairn.replication import SyncRules
from cairn.sync.engine import Syncer
from cairn.sync.keys import join

Passphrase = str | Callable[[bool], str] | None
"""The workspace's passphrase, or what asks for it (told whether the keyring is being made)."""


class SaveSettings(Protocol):
    """Writes where this device syncs to (``cairn.config.save_sync`` bound to a home and a
    remote); returns the file written."""

    def __call__(
        self, master_key: bytes | None, keyring_id: str | None, key_store: str
    ) -> Path: ...


@dataclass(frozen=True)
class SyncSetup:
    """What setting up sync did (``to_dict``: the report ``cairn sync setup --json`` prints)."""

    remote: str
    workspace: str | None
    mode: str
    device_id: str
    device_name: str
    recovery_key: str | None
    """Shown once: only when this device made the keyring."""
    key_store: str | None
    pending: int
    saved_to: Path
    made_folder: Path | None = None
    """The folder made for a new workspace (``create``), if one was."""

    @property
    def hosted(self) -> bool:
        return self.mode == HOSTED

    def to_dict(self) -> dict[str, Any]:
        return {
            "remote": self.remote,
            "workspace": self.workspace,
            "mode": self.mode,
            "device_id": self.device_id,
            "device_name": self.device_name,
            "created_keyring": self.recovery_key is not None,
            "recovery_key": self.recovery_key,
            "key_store": self.key_store,
            "pending": self.pending,
            "saved_to": str(self.saved_to),
        }


def folder_to_make(
    url: str, endpoint_url: str | None = None, create: bool = False, git: bool = False
) -> Path | None:
    """Check the remote's URL against the options; the folder to make for a new workspace
    (a file:// folder that does not exist yet, with ``create`` or ``git``), if any."""
    if endpoint_url and not url.startswith("s3://"):
        raise InvalidInput("--endpoint-url is for s3:// remotes")
    parsed = urlparse(url)
    folder = (
        Path(unquote(parsed.path))
        if parsed.scheme == "file" and parsed.netloc in ("", "localhost")
        else None
    )
    if create and parsed.scheme != "file":
        raise InvalidInput("--create is for a folder remote")
    making = folder is not None and not folder.exists()
    if making and not (create or git):
        raise InvalidInput(
            f"the folder {folder} does not exist: check the path, or add --create to make it "
            "(a new workspace, with its own passphrase and recovery key)"
        )
    return folder if making else None


def join_workspace(
    store: Store,
    remote: Remote,
    device_name: str,
    save: SaveSettings,
    *,
    passphrase: Passphrase = None,
    recovery_key: str | None = None,
    key_store_choice: str = "auto",
    rules: SyncRules | None = None,
    git_folder: str | None = None,
    made_folder: Path | None = None,
) -> SyncSetup:
    """Connect this device (``store``) to the workspace on ``remote`` (which the caller
    closes); ``git_folder``: the URL of a folder remote in a git repository, marked for git."""
    remote_status = remote.status()  # fails fast on a wrong URL or key
    keys, recovery = None, None
    hosted = remote_status.get("mode") == HOSTED
    if not hosted:
        creating = remote.get_keyring() is None
        secret = None
        if not recovery_key:
            secret = passphrase(creating) if callable(passphrase) else passphrase
        keys, recovery = join(remote, secret, recovery_key)
    # Only now, with the keyring open, does anything change here.
    remote.register_device(store.device_id(), device_name)
    key_store = None
    if keys is not None:
        key_store = master_keys.save(keys.keyring_id, keys.master, key_store_choice)
    path = save(
        keys.master if keys else None,
        keys.keyring_id if keys else None,
        key_store or master_keys.FILE,
    )
    if git_folder is not None:
        mark_for_git(git_folder)
    syncer = Syncer(store, remote, keys, rules)
    return SyncSetup(
        remote=remote.url,
        workspace=remote_status.get("workspace"),
        mode=HOSTED if hosted else E2E,
        device_id=syncer.device_id,
        device_name=device_name,
        recovery_key=recovery,
        key_store=key_store,
        pending=syncer.status()["pending"],
        saved_to=path,
        made_folder=made_folder,
    )


def mark_for_git(url: str) -> None:
    """Files git should take as they are (never converted or merged as text) and the ones it
    should not track (a compaction's lock, a storage probe, an interrupted write's staging
    file)."""
    folder = Path(unquote(urlparse(url).path))
    (folder / ".gitattributes").write_text("* -text -diff -merge\n", encoding="utf-8")
    (folder / ".gitignore").write_text("compact.lock\nprobes/\n*#*\n", encoding="utf-8")
