"""One exception hierarchy for Cairn; every error says what to do next.

Each class carries a stable ``code`` (for JSON and MCP), an ``exit_code`` for the CLI and an
``http_status`` for the HTTP API, so every edge maps errors through the same table::

    CairnError                      1  500  internal
    ├── InvalidInput                2  422  invalid_input
    │   ├── ContentEmpty            2  422  content_empty
    │   ├── ContentTooLarge         2  413  content_too_large
    │   └── ImportFormatError       2  422  import_format
    ├── NotFound                    4  404  not_found
    ├── StoreError                  5  500  store_error
    │   ├── StoreLocked             5  503  store_locked
    │   ├── StoreCorrupt            5  500  store_corrupt
    │   └── SchemaTooNew            5  500  schema_too_new
    ├── EmbeddingError              6  500  embedding_failed
    │   └── ModelNotFound           6  500  model_not_found
    ├── ConfigError                 7  500  config_invalid
    ├── CrossSiteRequest            1  403  cross_site_request
    └── SyncError                   8  502  sync_failed
        ├── SyncNotConfigured       8  400  sync_not_configured
        ├── RemoteUnreachable       8  503  unreachable
        ├── AuthFailed              9  401  auth_failed
        ├── Forbidden               9  403  forbidden
        ├── RemoteConflict          8  409  conflict
        ├── PayloadTooLarge         8  413  payload_too_large
        ├── MutationRejected        8  422  invalid_mutation
        ├── RateLimited             8  429  rate_limited
        ├── QuotaExceeded           8  429  quota_exceeded
        ├── NotHosted               8  409  not_hosted
        ├── StorageUnsupported      8  502  storage_unsupported
        └── CryptoError            10  400  crypto_failed
            ├── WrongPassphrase    10  401  wrong_passphrase
            ├── KeyMismatch        10  409  key_mismatch
            ├── KeyringUntrusted   10  403  keyring_untrusted
            └── PayloadTampered    10  422  payload_tampered

Sync errors travel over HTTP by code: ``error_for(code, message)`` rebuilds the class on the
client side of a remote, so the same table serves both ends.
"""

from __future__ import annotations


class CairnError(Exception):
    """Base of every error Cairn raises on purpose."""

    code = "internal"
    exit_code = 1
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class InvalidInput(CairnError):
    """The caller gave something Cairn cannot accept; nothing was changed."""

    code = "invalid_input"
    exit_code = 2
    http_status = 422


class ContentEmpty(InvalidInput):
    code = "content_empty"


class ContentTooLarge(InvalidInput):
    code = "content_too_large"
    http_status = 413


class ImportFormatError(InvalidInput):
    """A line of an import file is not a valid memory record."""

    code = "import_format"


class NotFound(CairnError):
    code = "not_found"
    exit_code = 4
    http_status = 404


class StoreError(CairnError):
    code = "store_error"
    exit_code = 5


class StoreLocked(StoreError):
    code = "store_locked"
    http_status = 503


class StoreCorrupt(StoreError):
    code = "store_corrupt"


class SchemaTooNew(StoreError):
    code = "schema_too_new"


class EmbeddingError(CairnError):
    code = "embedding_failed"
    exit_code = 6


class ModelNotFound(EmbeddingError):
    code = "model_not_found"


class ConfigError(CairnError):
    code = "config_invalid"
    exit_code = 7


class CrossSiteRequest(CairnError):
    """A web page asked for a change without this UI's token, or from another site."""

    code = "cross_site_request"
    http_status = 403


class SyncError(CairnError):
    """Syncing with a remote failed; local memories are untouched and nothing was lost."""

    code = "sync_failed"
    exit_code = 8
    http_status = 502


class SyncNotConfigured(SyncError):
    code = "sync_not_configured"
    http_status = 400


class RemoteUnreachable(SyncError):
    code = "unreachable"
    http_status = 503


class AuthFailed(SyncError):
    code = "auth_failed"
    exit_code = 9
    http_status = 401


class Forbidden(SyncError):
    code = "forbidden"
    exit_code = 9
    http_status = 403


class RemoteConflict(SyncError):
    code = "conflict"
    http_status = 409


class PayloadTooLarge(SyncError):
    code = "payload_too_large"
    http_status = 413


class MutationRejected(SyncError):
    """The remote refused some mutations of a batch (none of the batch was applied).

    ``rejected`` maps each refused mutation id to ``(code, message)`` so the client can set
    exactly those aside (dead-letter them) and send the rest again.
    """

    code = "invalid_mutation"
    http_status = 422

    def __init__(self, message: str, rejected: dict[str, tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.rejected = dict(rejected or {})

    def to_dict(self) -> dict[str, object]:  # type: ignore[override]
        data: dict[str, object] = {"code": self.code, "message": self.message}
        if self.rejected:
            data["rejected"] = [
                {"mutation_id": mid, "code": code, "message": msg}
                for mid, (code, msg) in self.rejected.items()
            ]
        return data


class RateLimited(SyncError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QuotaExceeded(SyncError):
    """The workspace is over a quota its administrator set; unsent changes wait locally."""

    code = "quota_exceeded"
    http_status = 429


class NotHosted(SyncError):
    """An endpoint for hosted workspaces (the server embeds, searches and remembers) was called
    in an end-to-end encrypted one, whose server cannot read its memories."""

    code = "not_hosted"
    http_status = 409


class StorageUnsupported(SyncError):
    """The storage behind an object remote lacks a feature sync relies on (put-if-absent):
    using it would let devices overwrite each other's objects and split the workspace."""

    code = "storage_unsupported"


class CryptoError(SyncError):
    """End-to-end encryption refused something; nothing from it was applied or changed."""

    code = "crypto_failed"
    exit_code = 10
    http_status = 400


class WrongPassphrase(CryptoError):
    code = "wrong_passphrase"
    http_status = 401


class KeyMismatch(CryptoError):
    """The keyring or a payload belongs to another workspace (or to a key this device lacks)."""

    code = "key_mismatch"
    http_status = 409


class KeyringUntrusted(CryptoError):
    """A keyring version lacks a valid proof by the workspace's master key (a write key or a
    bucket writer made it, or it was replayed): it is refused, never used."""

    code = "keyring_untrusted"
    http_status = 403


class PayloadTampered(CryptoError):
    """A sealed payload failed authentication: altered, truncated or moved to another slot."""

    code = "payload_tampered"
    http_status = 422


def error_for(code: str, message: str) -> CairnError:
    """The error whose stable ``code`` this is (a plain CairnError if unknown), with ``message``."""
    pending: list[type[CairnError]] = [CairnError]
    while pending:
        cls = pending.pop()
        if cls.code == code:
            return cls(message)
        pending.extend(cls.__subclasses__())
    return CairnError(message)
