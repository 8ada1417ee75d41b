"""Where a device keeps its workspace master key: the OS keyring where one exists, else a file.

``CAIRN_KEY_STORE`` chooses:

- ``auto`` (default): the operating system's own keyring (macOS Keychain, Windows Credential
  Locker, the Secret Service of GNOME/KDE) when the ``keyring`` library finds one; otherwise the
  key stays in ``$CAIRN_HOME/keys/sync.json`` (0600). Third-party backends (``keyrings.alt``
  and the like) are never picked on their own: some of them store secrets in plain text.
- ``keyring``: whatever backend the ``keyring`` library is configured to use (for example with
  ``PYTHON_KEYRING_BACKEND``); an error when it has none.
- ``file``: always the 0600 file.

Secrets are stored under the service ``cairn`` and the keyring id as user name; one workspace's
master key is the same on every CAIRN_HOME of this user, so sharing the entry is harmless.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from cairn.errors import ConfigError

SERVICE = "cairn"
OS_KEYRING = "os-keyring"
FILE = "file"
_NATIVE = (
    "keyring.backends.macOS",
    "keyring.backends.Windows",
    "keyring.backends.SecretService",
    "keyring.backends.libsecret",
    "keyring.backends.kwallet",
)


def _backend(choice: str) -> Any | None:
    """The keyring backend to use, or None for the file."""
    if choice == FILE:
        return None
    try:
        import keyring
        from keyring.backends import chainer, fail, null
    except ImportError as exc:  # a broken install; the file still works
        if choice == "keyring":
            raise ConfigError(f"CAIRN_KEY_STORE=keyring but {exc}") from exc
        return None
    backend = keyring.get_keyring()
    if isinstance(backend, fail.Keyring | null.Keyring):
        if choice == "keyring":
            raise ConfigError(
                "CAIRN_KEY_STORE=keyring but the keyring library has no usable backend here; "
                "set PYTHON_KEYRING_BACKEND or use CAIRN_KEY_STORE=file"
            )
        return None
    if choice == "keyring":
        return backend
    parts = backend.backends if isinstance(backend, chainer.ChainerBackend) else [backend]
    native = [b for b in parts if type(b).__module__.startswith(_NATIVE)]
    return native[0] if native else None


def save(keyring_id: str, secret: bytes, choice: str = "auto") -> str:
    """Put ``secret`` in the OS keyring when there is one (``choice``: auto, keyring or file,
    from CAIRN_KEY_STORE); returns where it went (``FILE``: the caller keeps it in its 0600
    file)."""
    choice = choice.strip().lower()
    if choice not in ("auto", "keyring", FILE):
        raise ConfigError(f"CAIRN_KEY_STORE is {choice!r}; use auto, keyring or file")
    backend = _backend(choice)
    if backend is None:
        return FILE
    encoded = base64.b64encode(secret).decode("ascii")
    try:
        backend.set_password(SERVICE, keyring_id, encoded)
        if backend.get_password(SERVICE, keyring_id) != encoded:
            raise RuntimeError("the keyring did not return what was stored")
    except Exception as exc:  # a locked or broken keyring: say so, keep the file working
        if choice == "keyring":
            raise ConfigError(f"the OS keyring refused the key ({exc})") from exc
        return FILE
    return OS_KEYRING


def load(keyring_id: str) -> bytes:
    """The secret ``save`` put in the keyring (whichever backend the ``keyring`` library uses
    now); ConfigError when it cannot be read."""
    fix = "run `cairn sync setup` again to store it"
    try:
        import keyring

        encoded = keyring.get_password(SERVICE, keyring_id)
    except Exception as exc:
        raise ConfigError(f"the OS keyring did not give back the sync key ({exc}); {fix}") from exc
    if encoded is None:
        raise ConfigError(f"the OS keyring has no sync key for this workspace; {fix}")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"the sync key in the OS keyring is damaged; {fix}") from exc
