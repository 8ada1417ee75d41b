"""Fuzzing ``config.toml`` (and ``keys/sync.json``): a person edits them by hand.

``config.load`` returns settings within their documented bounds or raises ConfigError, never
another exception; when the file is valid TOML and a value is wrong, the message names the key
(``embedding.max_tokens``), so the user knows what to fix. Valid settings written out read back
as the same.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cairn import config
from cairn.errors import ConfigError

from .fuzzing import ci, mutated, mutated_json, parse_or_refuse, soak

VALID: dict[str, dict[str, str]] = {
    "embedding": {"model_dir": '"/opt/models/minilm"', "max_tokens": "256"},
    "recall": {"near_duplicate": "0.92"},
    "sync": {
        "include_projects": '["api"]',
        "exclude_projects": '["scratch"]',
        "include_kinds": "[]",
        "exclude_kinds": '["session_summary"]',
        "include_tags": "[]",
        "exclude_tags": '["private"]',
        "file_chunks": "false",
    },
}
HOSTILE_TOML = [
    "inf",
    "nan",
    "-inf",
    "1e400",
    "-1",
    "0",
    "7",
    "513",
    "1.5",
    "3.0",
    "9" * 5_000,  # tomllib's int() refuses past 4300 digits with a ValueError
    "[" * 5_000 + "]" * 5_000,  # tomllib recurses past the stack
    "true",
    '"256"',
    '""',
    '"\\u0000"',
    '"a\\nb"',
    '"\\u0661\\u0662"',
    "[1, 2]",
    '["ok", 5]',
    '["A B"]',
    '["' + "x" * 200 + '"]',
    "{ a = 1 }",
    "1979-05-27T07:32:00Z",
]


def _toml(doc: dict[str, dict[str, str]]) -> str:
    return "".join(
        f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in table.items())
        for section, table in doc.items()
    )


@st.composite
def configs(draw: st.DrawFn) -> tuple[str, set[str]]:
    """(config.toml text, the dotted keys made wrong): values replaced, keys or sections
    added, or the file's bytes mutated (an empty set then: any key may be named)."""
    if draw(st.integers(0, 5)) == 0:
        raw = draw(mutated(_toml(VALID).encode()))
        return raw.decode("utf-8", "replace"), set()
    doc = {section: dict(table) for section, table in VALID.items()}
    changed: set[str] = set()
    for _ in range(draw(st.integers(1, 2))):
        section = draw(st.sampled_from(sorted(doc)))
        how = draw(st.sampled_from(["value", "value", "value", "remove", "unknown"]))
        key = draw(st.sampled_from(sorted(doc[section]))) if doc[section] else "max_tokens"
        if how == "value":
            doc[section][key] = draw(st.sampled_from(HOSTILE_TOML))
            changed.add(f"{section}.{key}")
        elif how == "remove":
            doc[section].pop(key, None)
        else:
            doc[section]["colour"] = "1"
            changed.add(f"{section}.colour")
    return _toml(doc), changed


def _check(home: Path, text: str, changed: set[str]) -> None:
    (home / "config.toml").write_text(text, encoding="utf-8")
    settings = parse_or_refuse(config.load, {"CAIRN_HOME": str(home)}, refuse=ConfigError)
    if settings is not None:
        assert type(settings.max_tokens) is int and 8 <= settings.max_tokens <= 512
        assert math.isfinite(settings.near_duplicate) and 0 <= settings.near_duplicate <= 1
        assert settings.model_dir is None or "\x00" not in str(settings.model_dir)
        assert isinstance(settings.sync.rules.file_chunks, bool)
        return
    try:
        tomllib.loads(text)
    except Exception:
        return  # not TOML: the message names the file, tested below
    with pytest.raises(ConfigError) as refused:
        config.load({"CAIRN_HOME": str(home)})
    if changed:
        assert any(key in refused.value.message for key in changed), refused.value.message


def _with(section: str, key: str, value: str) -> tuple[str, set[str]]:
    doc = {name: dict(table) for name, table in VALID.items()}
    doc.setdefault(section, {})[key] = value
    return _toml(doc), {f"{section}.{key}" if section in VALID else section}


@ci(150)
@given(found=configs())
@example(found=_with("embedding", "max_tokens", "inf"))  # OverflowError from int()
@example(found=_with("embedding", "max_tokens", "300.7"))  # int() truncated it
@example(found=_with("embedding", "max_tokens", '"abc"'))  # the message named no key
@example(found=_with("embedding", "model_dir", "[1]"))  # str() made a path of a list
@example(found=_with("embedding", "model_dir", '"/opt/\\u0000"'))  # Path.exists() raises
@example(found=_with("recall", "near_duplicate", "nan"))  # accepted: never a near-duplicate
@example(found=_with("recall", "near_duplicate", "7"))
@example(found=_with("sync", "file_chunks", '"no"'))  # bool("no") is True
@example(found=_with("sync", "exclude_kinds", '["A B"]'))  # named the value, not the key
@example(found=_with("recal", "near_duplicate", "0.5"))  # a misspelt section, ignored
@example(found=_with("embedding", "max_token", "128"))  # a misspelt key, ignored
@example(found=_with("embedding", "max_tokens", "9" * 5_000))  # ValueError from tomllib
@example(found=_with("embedding", "max_tokens", "[" * 5_000 + "]" * 5_000))  # RecursionError
def test_config_toml_is_read_or_refused_naming_the_key(
    tmp_path: Path, found: tuple[str, set[str]]
) -> None:
    _check(tmp_path, *found)


@pytest.mark.parametrize("content", [b"[embedding]\nmax_tokens = 2\xff56\n", b"\xfe\xff"])
def test_a_config_that_is_not_utf8_names_the_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "config.toml").write_bytes(content)
    with pytest.raises(ConfigError, match="config.toml"):
        config.load({"CAIRN_HOME": str(tmp_path)})


@pytest.mark.parametrize("value", ["abc", "inf", "4000", "1e3", " "])
def test_a_bad_environment_value_names_the_variable(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="CAIRN_MAX_TOKENS"):
        config.load({"CAIRN_HOME": str(tmp_path), "CAIRN_MAX_TOKENS": value})


@ci(50)
@given(
    model_dir=st.none() | st.from_regex(r"/[a-z0-9/_-]{1,30}", fullmatch=True),
    max_tokens=st.integers(8, 512),
    near_duplicate=st.floats(0, 1),
    projects=st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True), max_size=3),
    file_chunks=st.booleans(),
)
def test_valid_settings_read_back_as_written(
    tmp_path: Path,
    model_dir: str | None,
    max_tokens: int,
    near_duplicate: float,
    projects: list[str],
    file_chunks: bool,
) -> None:
    doc = {
        "embedding": {"max_tokens": str(max_tokens)},
        "recall": {"near_duplicate": repr(near_duplicate)},
        "sync": {"exclude_projects": json.dumps(projects), "file_chunks": str(file_chunks).lower()},
    }
    if model_dir is not None:
        doc["embedding"]["model_dir"] = json.dumps(model_dir)
    (tmp_path / "config.toml").write_text(_toml(doc), encoding="utf-8")
    settings = config.load({"CAIRN_HOME": str(tmp_path)})
    assert (settings.max_tokens, settings.near_duplicate) == (max_tokens, near_duplicate)
    assert settings.model_dir == (Path(model_dir) if model_dir else None)
    assert settings.sync.rules.exclude_projects == tuple(projects)
    assert settings.sync.rules.file_chunks is file_chunks


SYNC = {
    "remote": "https://sync.example",
    "api_key": "cairn_0123456789ab_" + "s" * 43,
    "mode": "e2e",
    "device_name": "laptop",
    "keyring_id": "abcdefghijklmnop",
    "key_store": "file",
    "master_key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
}


def _check_sync(tmp_path: Path, text: str) -> None:
    home = tmp_path / "sync-home"  # no config.toml here
    (home / "keys").mkdir(parents=True, exist_ok=True)
    (home / "keys" / "sync.json").write_text(text, encoding="utf-8")
    settings = parse_or_refuse(config.load, {"CAIRN_HOME": str(home)}, refuse=ConfigError)
    if settings is not None:
        sync = settings.sync
        assert isinstance(sync.remote, str) and isinstance(sync.device_name, str)
        assert sync.api_key is None or isinstance(sync.api_key, str)
        assert sync.endpoint_url is None or isinstance(sync.endpoint_url, str)
        assert sync.master_key is None or len(sync.master_key) == 32


@ci(100)
@given(text=mutated_json(SYNC))
@example(text="[]")  # AttributeError: 'list' has no get()
@example(text=json.dumps({**SYNC, "api_key": 5}))  # an API key that is not a string
@example(text=json.dumps({**SYNC, "master_key": "AAAA"}))  # a key that is not 32 bytes
@example(text="[" * 50_000 + "]" * 50_000)
def test_sync_json_is_read_or_refused(tmp_path: Path, text: str) -> None:
    _check_sync(tmp_path, text)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@soak(5_000)
@given(found=configs(), sync=mutated_json(SYNC))
def test_config_soak(tmp_path: Path, found: tuple[str, set[str]], sync: str) -> None:
    _check(tmp_path, *found)
    _check_sync(tmp_path, sync)
