"""Settings: defaults, then ``$CAIRN_HOME/config.toml``, then environment variables.

Only composition roots (the CLI, the MCP server, the HTTP API, ``cairn.open``) call ``load``;
everything below them receives a ``Settings``.

config.toml::

    [embedding]
    model_dir = "/path/to/folder"   # holds model.onnx + tokenizer.json; default: the bundled model
    max_tokens = 256

    [recall]
    near_duplicate = 0.92           # cosine at or above which remember reports a near-duplicate
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cairn.errors import ConfigError


@dataclass(frozen=True)
class Settings:
    home: Path
    db_path: Path
    model_dir: Path | None = None
    max_tokens: int = 256
    near_duplicate: float = 0.92
    source: str = "cli"


def load(environ: Mapping[str, str] | None = None, source: str = "cli") -> Settings:
    env = os.environ if environ is None else environ
    home = Path(env.get("CAIRN_HOME") or Path.home() / ".cairn").expanduser()
    data = _read_toml(home / "config.toml")
    embedding = _section(data, "embedding")
    recall = _section(data, "recall")
    model_dir = env.get("CAIRN_MODEL_DIR") or embedding.get("model_dir")
    try:
        max_tokens = int(env.get("CAIRN_MAX_TOKENS") or embedding.get("max_tokens", 256))
        near_dup = float(recall.get("near_duplicate", 0.92))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{home / 'config.toml'}: {exc}; fix the value and retry") from exc
    if not 8 <= max_tokens <= 512:
        raise ConfigError("embedding.max_tokens must be between 8 and 512")
    db = env.get("CAIRN_DB")
    return Settings(
        home=home,
        db_path=Path(db).expanduser() if db else home / "cairn.db",
        model_dir=Path(str(model_dir)).expanduser() if model_dir else None,
        max_tokens=max_tokens,
        near_duplicate=near_dup,
        source=source,
    )


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
    return value


def default_project(cwd: Path | None = None) -> str:
    """The name of the git repository holding ``cwd`` (its top folder), else ``default``."""
    here = (cwd or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ".git").exists():
            return folder.name
    return "default"
