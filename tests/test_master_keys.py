"""Where the workspace master key is kept (``cairn.master_keys``); the OS-keyring path itself is
exercised end to end in tests/cli/test_sync_cli.py with a real keyring backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from keyrings.alt.file import PlaintextKeyring

from cairn import master_keys
from cairn.errors import ConfigError


def test_file_is_chosen_when_asked() -> None:
    assert master_keys.save("kr-test", b"k" * 32, "file") == master_keys.FILE


@pytest.fixture
def plaintext_backend(tmp_path: Path) -> Iterator[None]:
    """keyrings.alt's plain-text file backend as the keyring library's backend."""
    before = keyring.get_keyring()
    backend = PlaintextKeyring()
    backend.file_path = str(tmp_path / "keyring.cfg")  # type: ignore[misc]
    keyring.set_keyring(backend)
    yield
    keyring.set_keyring(before)


def test_auto_never_picks_a_third_party_backend(plaintext_backend: None) -> None:
    """keyrings.alt stores secrets in a plain-text file: auto must not take it for an OS one."""
    assert master_keys.save("kr-test", b"k" * 32, "auto") == master_keys.FILE
    assert master_keys.save("kr-test", b"k" * 32, " AUTO ") == master_keys.FILE


def test_keyring_takes_whatever_backend_is_configured(plaintext_backend: None) -> None:
    assert master_keys.save("kr-test", b"k" * 32, "keyring") == master_keys.OS_KEYRING
    assert master_keys.load("kr-test") == b"k" * 32
    with pytest.raises(ConfigError, match="no sync key"):
        master_keys.load("kr-missing")


def test_an_unknown_choice_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="CAIRN_KEY_STORE"):
        master_keys.save("kr-test", b"k" * 32, "vault")
