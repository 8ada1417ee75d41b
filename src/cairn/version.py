"""The installed package's version (``cairn.__version__``), read from its metadata."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cairn-memory")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"
