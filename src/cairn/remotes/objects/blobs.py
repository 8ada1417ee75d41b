"""The objects of a bucket or folder through obstore, sealed; storage errors said as Cairn's."""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

import obstore
from obstore.exceptions import AlreadyExistsError, PermissionDeniedError, UnauthenticatedError

from cairn.errors import AuthFailed, Forbidden, RemoteUnreachable, SyncNotConfigured
from cairn.remotes.base import Frames
from cairn.remotes.objects.format import FRAME, inflate

T = TypeVar("T")

_S3_ERROR = re.compile(r"<Code>([A-Za-z0-9.]{1,64})</Code>\s*<Message>([^<]{0,300})</Message>")
_S3_HINTS = {
    "NoSuchBucket": "check the bucket's name (and --endpoint-url), or create the bucket first",
    "AccessDenied": "check that these credentials may read and write this bucket",
    "InvalidAccessKeyId": "check AWS_ACCESS_KEY_ID (or the profile's key)",
    "SignatureDoesNotMatch": "check AWS_SECRET_ACCESS_KEY (or the profile's secret)",
}


class Blobs:
    """The objects of one remote (an obstore S3Store, LocalStore or MemoryStore), sealed by the
    workspace's ``Frames`` once its keys are open, and what could not be read from them."""

    def __init__(self, store: Any, url: str, frames: Frames | None = None) -> None:
        self.store = store
        self.url = url
        self.frames = frames
        self.skipped: dict[str, str] = {}
        """Objects that did not open (never applied), with why."""
        self.missing: dict[str, str] = {}
        """Batches missing from the middle of a log, which hold it back."""

    # --- storage ------------------------------------------------------------------------------

    def get(self, path: str) -> bytes:
        return self.call(lambda: bytes(obstore.get(self.store, path).bytes()))

    def put(self, path: str, data: bytes, create: bool) -> None:
        self.call(lambda: obstore.put(self.store, path, data, mode="create" if create else None))

    def delete(self, paths: list[str]) -> None:
        """Remove objects; one already gone (another compaction, a synced folder) is fine."""
        if not paths:
            return
        try:
            self.call(lambda: obstore.delete(self.store, paths))
        except FileNotFoundError:
            for path in paths:
                try:
                    self.call(lambda p=path: obstore.delete(self.store, p))  # type: ignore[misc]
                except FileNotFoundError:
                    pass

    def names(self, prefix: str, offset: str | None = None) -> list[str]:
        """The names of the objects under ``prefix`` (after ``offset``), without it, sorted."""

        def listing() -> list[str]:
            items = obstore.list(self.store, prefix=prefix, offset=offset).collect()
            return sorted(str(item["path"])[len(prefix) :] for item in items)

        return self.call(listing)

    def children(self, prefix: str) -> tuple[list[str], list[str]]:
        """One level under ``prefix``: the last name of each object, and of each folder."""
        found = self.call(lambda: obstore.list_with_delimiter(self.store, prefix=prefix))
        objects = [str(o["path"]).rsplit("/", 1)[-1] for o in found["objects"]]
        folders = [p.rstrip("/").rsplit("/", 1)[-1] for p in found["common_prefixes"]]
        return objects, folders

    def call(self, work: Callable[[], T]) -> T:
        """Run an obstore call; failures of the storage become RemoteUnreachable."""
        try:
            return work()
        except (AlreadyExistsError, FileNotFoundError):
            raise
        except OSError as exc:
            raise RemoteUnreachable(f"cannot reach {self.url}: {_first_line(exc)}") from exc
        except UnauthenticatedError as exc:
            raise AuthFailed(f"{self.url} refused the credentials: {_first_line(exc)}") from exc
        except PermissionDeniedError as exc:
            raise Forbidden(f"{self.url}: {_first_line(exc)}") from exc
        except Exception as exc:  # obstore's own errors (network, auth) are not OSErrors
            if type(exc).__module__.startswith("obstore"):
                raise RemoteUnreachable(f"{self.url}: {_first_line(exc)}") from exc
            raise

    # --- sealing ------------------------------------------------------------------------------

    def keys(self) -> Frames:
        """The workspace's ``Frames``; SyncNotConfigured while its keys are not open."""
        if self.frames is None:
            raise SyncNotConfigured(
                f"the workspace's keys are not open for {self.url}; run `cairn sync setup`"
            )
        return self.frames

    def seal(self, path: str, body: bytes) -> bytes:
        return FRAME + self.keys().seal(path, body)

    def open(self, path: str, data: bytes) -> bytes:
        frames = self.keys()  # no key is not a damaged object: never skip for it
        if data[:4] != FRAME:
            raise ValueError("not a Cairn object")
        return frames.open(path, data[4:])

    def frame(self, path: str, body: bytes) -> bytes:
        """A small JSON object (a device record, a manifest), compressed and sealed."""
        return self.seal(path, zlib.compress(body, 6))

    def unframe(self, path: str, data: bytes) -> bytes:
        return inflate(self.open(path, data))


def _first_line(exc: Exception) -> str:
    """An obstore error's message without the debug dump it appends, and an S3 error's XML
    body said as its code and message (with what to do, for the usual ones)."""
    text = str(exc).split("\n\nDebug source", 1)[0].strip()
    found = _S3_ERROR.search(text)
    if found is None:
        return text
    code, message = found.groups()
    hint = _S3_HINTS.get(code)
    return f"{code}: {message.strip()}" + (f"; {hint}" if hint else "")
