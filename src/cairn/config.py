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
the key itself goes to the OS keyring instead where one exists (``cairn.master_keys``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
import socket
import subprocess
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cairn.errors import ConfigError, InvalidInput
from cairn.model import DEFAULT_PROJECT, check_kind, check_project, check_tags
from cairn.protocol import E2E, HOSTED, MODES
from cairn.replication import SyncRules
from cairn.settings import Settings, SyncSettings

SYNC_FILE = "sync.json"
_RULES = tuple(f"{w}_{k}" for w in ("include", "exclude") for k in ("projects", "kinds", "tags"))
KEYS = {
    "embedding": ("model_dir", "max_tokens"),
    "recall": ("near_duplicate",),
    "sync": (*_RULES, "file_chunks"),
}
"""Every table of config.toml and its keys; anything else is refused by name (a misspelt key
would otherwise be ignored without a word)."""
_DIGITS = re.compile(r"\s*[0-9]{1,9}\s*")


def load(environ: Mapping[str, str] | None = None, source: str = "cli") -> Settings:
    env = os.environ if environ is None else environ
    home = Path(env.get("CAIRN_HOME") or Path.home() / ".cairn").expanduser()
    data = _read_toml(home / "config.toml")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConfigError(
            f"config.toml: unknown table {', '.join(map(repr, unknown))}; Cairn reads "
            "[embedding], [recall] and [sync]: fix the name or remove it"
        )
    embedding = _section(data, "embedding")
    recall = _section(data, "recall")
    model_dir = env.get("CAIRN_MODEL_DIR") or embedding.get("model_dir")
    if model_dir is not None and (not isinstance(model_dir, str) or "\x00" in model_dir):
        raise ConfigError("config.toml: embedding.model_dir must be a folder's path, in quotes")
    if env.get("CAIRN_MAX_TOKENS"):
        text = env["CAIRN_MAX_TOKENS"]
        if not _DIGITS.fullmatch(text) or not 8 <= int(text) <= 512:
            raise ConfigError(
                f"CAIRN_MAX_TOKENS must be a whole number from 8 to 512, not {text!r}"
            )
        max_tokens = int(text)
    else:
        max_tokens = int(_number(embedding, "embedding", "max_tokens", 256, 8, 512, whole=True))
    near_dup = _number(recall, "recall", "near_duplicate", 0.92, 0, 1, whole=False)
    db = env.get("CAIRN_DB")
    return Settings(
        home=home,
        db_path=Path(db).expanduser() if db else home / "cairn.db",
        model_dir=Path(str(model_dir)).expanduser() if model_dir else None,
        max_tokens=max_tokens,
        near_duplicate=float(near_dup),
        source=source,
        sync=_sync(home, _section(data, "sync"), env.get("CAIRN_KEY_STORE") or "auto"),
        local_token=env.get("CAIRN_LOCAL_TOKEN") or None,
    )


def reload(settings: Settings) -> Settings:
    """The settings of ``settings.home`` as they are on disk now (a long-running process's
    sync setup may have changed since it started)."""
    return load({**os.environ, "CAIRN_HOME": str(settings.home)}, settings.source)


def _sync(home: Path, table: dict[str, Any], key_store_choice: str) -> SyncSettings:
    rules = _rules(table)
    path = home / "keys" / SYNC_FILE
    if not path.exists():
        return SyncSettings(rules=rules, key_store_choice=key_store_choice)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict):
            raise ValueError("it is not a JSON object")
        for key in ("api_key", "endpoint_url", "device_name"):
            if saved.get(key) is not None and not isinstance(saved[key], str):
                raise ValueError(f"{key} is not a string")
        mode = str(saved.get("mode", E2E))
        key_store = str(saved.get("key_store", "file"))
        if mode not in MODES or key_store not in ("file", "os-keyring"):
            raise ValueError(f"mode {mode!r} / key_store {key_store!r}")
        in_file = mode == E2E and key_store == "file"
        master_key = base64.b64decode(saved["master_key"], validate=True) if in_file else None
        if master_key is not None and len(master_key) != 32:
            raise ValueError("master_key is not a 32-byte key")
        return SyncSettings(
            remote=str(saved["remote"]),
            api_key=saved.get("api_key"),
            endpoint_url=saved.get("endpoint_url"),
            master_key=master_key,
            keyring_id=str(saved["keyring_id"]) if mode == E2E else None,
            mode=mode,
            key_store=key_store,
            key_store_choice=key_store_choice,
            device_name=str(saved.get("device_name") or socket.gethostname()),
            rules=rules,
        )
    except (OSError, ValueError, KeyError, TypeError, binascii.Error, RecursionError) as exc:
        raise ConfigError(
            f"cannot read {path} ({exc!s:.200}); run `cairn sync setup` again to rewrite it"
        ) from exc


def _rules(table: dict[str, Any]) -> SyncRules:
    def names(key: str, check: Callable[[list[str]], tuple[str, ...]]) -> tuple[str, ...]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config.toml: sync.{key} must be a list of strings")
        try:
            return check(value)
        except InvalidInput as exc:
            raise ConfigError(f"config.toml: sync.{key}: {exc.message}") from exc

    def projects(values: list[str]) -> tuple[str, ...]:
        return tuple(check_project(p) for p in values)

    def kinds(values: list[str]) -> tuple[str, ...]:
        return tuple(check_kind(k) for k in values)

    file_chunks = table.get("file_chunks", False)
    if not isinstance(file_chunks, bool):
        raise ConfigError("config.toml: sync.file_chunks must be true or false")
    return SyncRules(
        include_projects=names("include_projects", projects),
        exclude_projects=names("exclude_projects", projects),
        include_kinds=names("include_kinds", kinds),
        exclude_kinds=names("exclude_kinds", kinds),
        include_tags=names("include_tags", check_tags),
        exclude_tags=names("exclude_tags", check_tags),
        file_chunks=file_chunks,
    )


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
    # ValueError: not UTF-8, or an integer past int()'s 4300 digits; RecursionError: arrays
    # nested past the interpreter's stack.
    except (OSError, ValueError, RecursionError) as exc:
        raise ConfigError(f"cannot read {path}: {exc!s:.200}; fix or remove the file") from exc


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"config.toml: [{name}] must be a table")
    unknown = sorted(set(value) - set(KEYS[name]))
    if unknown:
        raise ConfigError(
            f"config.toml: unknown key {', '.join(f'{name}.{key}' for key in unknown)}; "
            f"[{name}] takes {', '.join(KEYS[name])}"
        )
    return value


def _number(
    table: dict[str, Any], name: str, key: str, default: float, low: float, high: float, whole: bool
) -> float:
    """A number of config.toml within its bounds: the error names the key (never a bool, a
    string, NaN or infinity; ``whole``: an integer, not 300.7)."""
    value = table.get(key, default)
    kinds = int if whole else (int, float)
    if (
        isinstance(value, bool)
        or not isinstance(value, kinds)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        what = "whole number" if whole else "number"
        raise ConfigError(
            f"config.toml: {name}.{key} must be a {what} from {low:g} to {high:g}, "
            f"not {value!r:.40}"
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
