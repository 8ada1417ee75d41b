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
    └── ConfigError                 7  500  config_invalid
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
