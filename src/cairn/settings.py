"""Settings as every layer receives them: plain frozen values, read by ``cairn.config`` only."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from cairn.protocol import E2E
from cairn.replication import SyncRules


@dataclass(frozen=True)
class SyncSettings:
    """Where this device syncs to, and what it shares (``remote`` None: sync not set up).

    ``master_key`` opens the workspace's keyring (never the passphrase itself is kept); it is
    None when ``key_store`` is the OS keyring (read it with ``cairn.master_keys.load``) and in a
    hosted workspace, which has no keyring.
    """

    remote: str | None = None
    api_key: str | None = None
    endpoint_url: str | None = None  # an S3-compatible service's endpoint (s3:// remotes)
    master_key: bytes | None = None
    keyring_id: str | None = None
    mode: str = E2E
    key_store: str = "file"
    key_store_choice: str = "auto"  # CAIRN_KEY_STORE: where `cairn sync setup` puts the key
    device_name: str = field(default_factory=socket.gethostname)
    rules: SyncRules = field(default_factory=SyncRules)


@dataclass(frozen=True)
class Settings:
    home: Path
    db_path: Path
    model_dir: Path | None = None
    max_tokens: int = 256
    near_duplicate: float = 0.92
    source: str = "cli"
    sync: SyncSettings = field(default_factory=SyncSettings)
    local_token: str | None = None
    """CAIRN_LOCAL_TOKEN: the bearer token `cairn serve` requires (needed off loopback)."""
