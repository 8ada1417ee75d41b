"""API keys: ``cairn_<id>_<secret>``, shown once, stored as a SHA-256 of the secret, scoped.

Scopes nest: ``admin`` grants ``write``, which grants ``read``. The key id is public (it names
the key in lists and logs); only the secret authenticates.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from cairn.errors import AuthFailed, Forbidden, InvalidInput
from cairn.ids import uuid7
from cairn.model import iso
from cairn.protocol import E2E, MODES
from cairn.server.storage import SCOPES, ApiKey, ServerStorage, Workspace

PREFIX = "cairn_"
MAX_NAME = 100
NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
"""A key's name: no control characters (it is printed in terminals), not blank."""
# Matched whole (``fullmatch``: ``$`` also matches before a final newline), in ASCII only.
_TOKEN = re.compile(r"cairn_([0-9a-f]{12})_([A-Za-z0-9_-]{20,200})", re.ASCII)
_WORKSPACE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
_NAME = re.compile(NAME_PATTERN)
_HOW_TO_GET_ONE = (
    "send `Authorization: Bearer cairn_...` with a key from `cairn server workspace create` "
    "or `cairn server key create`"
)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """The scopes, deduplicated, weakest first; InvalidInput naming any unknown one."""
    given = set(scopes)
    unknown = given - set(SCOPES)
    if unknown or not given:
        raise InvalidInput(
            f"scopes must be one or more of {', '.join(SCOPES)} "
            f"(got {', '.join(sorted(unknown)) or 'none'})"
        )
    return tuple(s for s in SCOPES if s in given)


def grants(scopes: Iterable[str], needed: str) -> bool:
    """True when a key with ``scopes`` may do what ``needed`` allows (admin > write > read)."""
    return max(SCOPES.index(s) for s in scopes) >= SCOPES.index(needed)


def issue(
    storage: ServerStorage, workspace_id: str, name: str, scopes: Iterable[str], now: int
) -> tuple[ApiKey, str]:
    """A new key for the workspace, and its full token (shown once; never stored)."""
    name = name.strip(" ")
    if len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise InvalidInput(
            f"a key name is 1-{MAX_NAME} characters without control characters, e.g. the "
            "device or person that uses it"
        )
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    key = ApiKey(
        id=key_id,
        workspace_id=workspace_id,
        name=name,
        scopes=check_scopes(scopes),
        created_at=now,
        secret_hash=hash_secret(secret),
    )
    storage.add_key(key)
    return key, f"{PREFIX}{key_id}_{secret}"


def to_json(key: ApiKey) -> dict[str, Any]:
    """A key's record for people and scripts; never its secret or hash."""
    return {
        "id": key.id,
        "name": key.name,
        "scopes": list(key.scopes),
        "created_at": iso(key.created_at),
        "last_used_at": None if key.last_used_at is None else iso(key.last_used_at),
        "revoked_at": None if key.revoked_at is None else iso(key.revoked_at),
    }


def create_workspace(
    storage: ServerStorage, name: str, now: int, mode: str = E2E
) -> tuple[Workspace, str]:
    """A new workspace and the token of its first admin key (shown once)."""
    if not _WORKSPACE_NAME.fullmatch(name):
        raise InvalidInput(
            "a workspace name is 1-64 letters, digits and _.- (starting with a letter or digit)"
        )
    if mode not in MODES:
        raise InvalidInput(f"a workspace's mode is e2e or hosted, not {mode!r}")
    workspace = storage.create_workspace(uuid7(now), name, now, mode)
    _, token = issue(storage, workspace.id, "admin", ["admin"], now)
    return workspace, token


class KeyFinder(Protocol):
    """Where a request's key is looked up: the storage, or a cache over it."""

    def find_key(self, key_id: str) -> ApiKey | None: ...


@dataclass(frozen=True)
class Rejection:
    """Why a request's credentials did not authenticate, for counting and auditing failures."""

    reason: str
    """``missing``, ``malformed``, ``unknown_key``, ``wrong_secret`` or ``revoked``."""
    error: AuthFailed
    key_id: str | None = None
    """The key id the request presented (a well-formed token's; public, never the secret)."""
    workspace_id: str | None = None
    """That key's workspace, when the key exists."""


def check(finder: KeyFinder, authorization: str | None) -> ApiKey | Rejection:
    """The live key an ``Authorization: Bearer`` header carries, or why there is none."""
    if not authorization:
        return Rejection("missing", AuthFailed(f"this server needs an API key; {_HOW_TO_GET_ONE}"))
    scheme, _, token = authorization.partition(" ")
    match = _TOKEN.fullmatch(token.strip()) if scheme.lower() == "bearer" else None
    if match is None:
        message = f"the Authorization header holds no Cairn API key; {_HOW_TO_GET_ONE}"
        return Rejection("malformed", AuthFailed(message))
    key_id = match.group(1)
    key = finder.find_key(key_id)
    invalid = AuthFailed("this API key is not valid here; check it or create a new one")
    if key is None:
        return Rejection("unknown_key", invalid, key_id)
    if not hmac.compare_digest(key.secret_hash, hash_secret(match.group(2))):
        return Rejection("wrong_secret", invalid, key_id, key.workspace_id)
    if key.revoked_at is not None:
        return Rejection("revoked", _revoked(key_id), key_id, key.workspace_id)
    return key


def recheck(finder: KeyFinder, key: ApiKey) -> None:
    """AuthFailed if ``key`` was revoked (or removed) since it authenticated: a request that
    waited (a long-poll) must not answer with what was written after its key was revoked."""
    current = finder.find_key(key.id)
    if current is None or current.revoked_at is not None:
        raise _revoked(key.id)


def _revoked(key_id: str) -> AuthFailed:
    return AuthFailed(f"API key {key_id} was revoked; ask a workspace admin for a new one")


def require(key: ApiKey, needed: str) -> None:
    """Forbidden unless ``key`` grants ``needed``."""
    if not grants(key.scopes, needed):
        raise Forbidden(
            f"API key {key.id} has scope {', '.join(key.scopes)}; this needs {needed}. "
            f"Use a key with the {needed} scope (`cairn server key create --scope {needed}`)"
        )
