"""Settings: defaults, then ``$CAIRN_HOME/config.toml``, then environment variables.

Only composition roots (the CLI, the MCP server, the HTTP API, ``cairn.open``) call ``load``;
everything below them receives a ``Settings``.

config.toml::

    [embedding]
    model_dir = "/path/to/folder"   # holds model.onnx + tokenizer.json; default: the bundled model
    max_tokens = 256

    [recall]
    near_duplicate = 0.92           # cosine at or above which remember reports a near-duplicate

    [sync]                          # selective sync; empty include lists mean "all"
    include_projects = ["api"]
    exclude_projects = ["scratch"]
    include_kinds = []
    exclude_kinds = ["session_summary"]
    include_tags = []               # a memory needs one of these (when any are given)
    exclude_tags = ["private"]
    file_chunks = false             # file_chunk memories stay on this device unless true

Where to sync to (the remote, the API key and the key that opens the workspace's keyring) is
written by ``cairn sync setup`` into ``$CAIRN_HOME/keys/sync.json``, readable by this user only;
the key itself goes to the OS keyring instead where one exists (``cairn.keystore``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cairn.errors import ConfigError, InvalidInput
from cairn.model import DEFAULT_PROJECT, SyncRules, check_kind, check_project, check_tags
from cairn.protocol import E2E, HOSTED, MODES

SYNC_FILE = "sync.json"


@dataclass(frozen=True)
class SyncSettings:
    """Where this device syncs to, and what it shares (``remote`` None: sync not set up).

    ``master_key`` opens the workspace's keyring (never the passphrase itself is kept); it is
    None when ``key_store`` is the OS keyring (read it with ``cairn.keystore.load``) and in a
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


SECTIONS = {
    "embedding": {"model_dir", "max_tokens"},
    "recall": {"near_duplicate"},
    "sync": {
        *(f"{w}_{k}" for w in ("include", "exclude") for k in ("projects", "kinds", "tags")),
        "file_chunks",
    },
}
"""The sections config.toml may have, and their keys: anything else is reported, not ignored."""


def load(environ: Mapping[str, str] | None = None, source: str = "cli") -> Settings:
    env = os.environ if environ is None else environ
    home = Path(env.get("CAIRN_HOME") or Path.home() / ".cairn").expanduser()
    data = _read_toml(home / "config.toml")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"{home / 'config.toml'}: unknown section [{unknown[0]}]; the sections are "
            f"{', '.join(f'[{name}]' for name in SECTIONS)}"
        )
    embedding = _section(data, "embedding")
    recall = _section(data, "recall")
    model_dir = env.get("CAIRN_MODEL_DIR") or embedding.get("model_dir")
    tokens = env.get("CAIRN_MAX_TOKENS")
    max_tokens = int(
        _number(int, tokens, "CAIRN_MAX_TOKENS")
        if tokens
        else _number(int, embedding.get("max_tokens", 256), "config.toml: [embedding] max_tokens")
    )
    near_dup = float(
        _number(float, recall.get("near_duplicate", 0.92), "config.toml: [recall] near_duplicate")
    )
    if not 8 <= max_tokens <= 512:
        raise ConfigError("config.toml: [embedding] max_tokens must be between 8 and 512")
    db = env.get("CAIRN_DB")
    return Settings(
        home=home,
        db_path=Path(db).expanduser() if db else home / "cairn.db",
        model_dir=Path(str(model_dir)).expanduser() if model_dir else None,
        max_tokens=max_tokens,
        near_duplicate=near_dup,
        source=source,
        sync=_sync(home, _section(data, "sync"), env.get("CAIRN_KEY_STORE") or "auto"),
        local_token=env.get("CAIRN_LOCAL_TOKEN") or None,
    )


def _number(kind: type[int] | type[float], raw: Any, where: str) -> float:
    """``raw`` as a number of ``kind``; a ConfigError naming ``where`` it came from if not."""
    try:
        if isinstance(raw, bool):
            raise TypeError("not a number")
        return kind(raw)
    except (TypeError, ValueError) as exc:
        noun = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{where} must be {noun}, not {raw!r}; fix the value and retry") from exc


def _sync(home: Path, table: dict[str, Any], key_store_choice: str) -> SyncSettings:
    rules = _rules(table)
    path = home / "keys" / SYNC_FILE
    if not path.exists():
        return SyncSettings(rules=rules, key_store_choice=key_store_choice)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        mode = str(saved.get("mode", E2E))
        key_store = str(saved.get("key_store", "file"))
        if mode not in MODES or key_store not in ("file", "os-keyring"):
            raise ValueError(f"mode {mode!r} / key_store {key_store!r}")
        in_file = mode == E2E and key_store == "file"
        return SyncSettings(
            remote=str(saved["remote"]),
            api_key=saved.get("api_key"),
            endpoint_url=saved.get("endpoint_url"),
            master_key=base64.b64decode(saved["master_key"], validate=True) if in_file else None,
            keyring_id=str(saved["keyring_id"]) if mode == E2E else None,
            mode=mode,
            key_store=key_store,
            key_store_choice=key_store_choice,
            device_name=str(saved.get("device_name") or socket.gethostname()),
            rules=rules,
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"cannot read {path} ({exc}); run `cairn sync setup` again to rewrite it"
        ) from exc


def _rules(table: dict[str, Any]) -> SyncRules:
    def names(key: str) -> tuple[str, ...]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config.toml: [sync] {key} must be a list of strings")
        return tuple(value)

    try:
        return SyncRules(
            include_projects=tuple(check_project(p) for p in names("include_projects")),
            exclude_projects=tuple(check_project(p) for p in names("exclude_projects")),
            include_kinds=tuple(check_kind(k) for k in names("include_kinds")),
            exclude_kinds=tuple(check_kind(k) for k in names("exclude_kinds")),
            include_tags=check_tags(names("include_tags")),
            exclude_tags=check_tags(names("exclude_tags")),
            file_chunks=bool(table.get("file_chunks", False)),
        )
    except InvalidInput as exc:
        raise ConfigError(f"config.toml: [sync]: {exc}") from exc


def save_sync(
    home: Path,
    remote: str,
    api_key: str | None,
    name: str,
    master_key: bytes | None = None,
    keyring_id: str | None = None,
    key_store: str = "file",
    endpoint_url: str | None = None,
) -> Path:
    """Write where this device syncs to, readable by this user only (atomically): with the
    master key when ``key_store`` is the file, without it when it is in the OS keyring, and in
    hosted mode (no ``master_key``) without either."""
    folder = home / "keys"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / SYNC_FILE
    temp = folder / f".{SYNC_FILE}.tmp"
    data: dict[str, Any] = {
        "remote": remote,
        "api_key": api_key,
        "mode": E2E if master_key is not None else HOSTED,
        "device_name": name,
    }
    if endpoint_url:
        data["endpoint_url"] = endpoint_url
    if master_key is not None:
        data["keyring_id"] = keyring_id
        data["key_store"] = key_store
        if key_store == "file":
            data["master_key"] = base64.b64encode(master_key).decode("ascii")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
    os.replace(temp, path)
    return path


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; fix or remove the file") from exc


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"config.toml: [{name}] must be a table")
    unknown = sorted(set(value) - SECTIONS[name])
    if unknown:
        raise ConfigError(
            f"config.toml: [{name}] has unknown keys {unknown}; it takes "
            f"{', '.join(sorted(SECTIONS[name]))}"
        )
    return value


def default_project(cwd: Path | None = None) -> str:
    """The project of memories written in ``cwd``: the repository its git ``origin`` remote
    names (``org/repo``, the same in every clone, worktree and renamed folder), else the name
    of the repository's own folder (the main one, for a worktree), else ``default``."""
    top = git_root(cwd)
    if top is None:
        return DEFAULT_PROJECT
    origin = _git(top, "config", "--get", "remote.origin.url")
    name = repository_name(origin) if origin else None
    if name is not None:
        return name
    common = _git(top, "rev-parse", "--path-format=absolute", "--git-common-dir")
    main = Path(common).parent if common and Path(common).name == ".git" else top
    return check_project(main.name)


_SCP = re.compile(r"(?:[^@/:\s]+@)?[^@/:\s]{2,}:(?!//)(.+)", re.ASCII)
"""git's scp-like syntax, ``[user@]host:path``."""


def repository_name(url: str) -> str | None:
    """The name a remote URL gives its repository, whatever the syntax: the path on the host
    without ``.git``, lowercased (``git@github.com:Acme/Shop.git`` and
    ``https://github.com/acme/shop`` are both ``acme/shop``); for a folder, its name. Never a
    user name or a token from the URL. None if it names no repository."""
    url = url.strip()
    scp = _SCP.fullmatch(url)
    if "://" in url:
        parts = urlsplit(url)
        path, local = parts.path, parts.scheme == "file"
    elif scp is not None:
        path, local = scp.group(1), False
    else:
        path, local = url, True
    path = path.strip("/").removesuffix(".git").strip("/").lstrip("~")
    name = (path.rsplit("/", 1)[-1] if local else path).lower()
    if not name or name in (".", "..") or len(name) > 128:
        return None
    return name


def _git(top: Path, *args: str) -> str | None:
    """A git command's output in the repository at ``top`` (never one above it), or None when
    it fails or git is not installed."""
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(top.parent)}
    try:
        done = subprocess.run(
            ["git", "-C", str(top), *args],
            capture_output=True,
            text=True,
            timeout=10,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    out = done.stdout.strip()
    return out if done.returncode == 0 and out else None


def git_root(cwd: Path | None = None) -> Path | None:
    """The top folder of the git repository holding ``cwd`` (a folder not made yet counts by
    its nearest existing parent), or None."""
    here = (cwd or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ".git").exists():
            return folder
    return None
