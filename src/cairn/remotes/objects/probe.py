"""What an object remote checks before it writes: put-if-absent holds, and the format is known."""

from __future__ import annotations

import json
import secrets
import time

from obstore.exceptions import AlreadyExistsError

from cairn.errors import SchemaTooNew, StorageUnsupported, SyncError
from cairn.remotes.objects.blobs import Blobs
from cairn.remotes.objects.format import FORMAT, parse_json, whole_number

HEADER = "cairn.json"
PROBE_EVERY = 86400.0
"""Seconds after which a long-running process checks put-if-absent again before a write."""


class WriteCheck:
    """``probes/<token>`` (put-if-absent is honoured) and ``cairn.json`` (the format version: a
    newer one is refused, never misread), checked before a process's first write."""

    def __init__(self, blobs: Blobs) -> None:
        self.blobs = blobs
        self._checked = False
        self._probed_at: float | None = None  # when put-if-absent was last seen to hold

    def probe(self) -> None:
        """Check that the storage honours put-if-absent (``If-None-Match: *`` on S3): write a
        probe object twice, the second time expecting to be refused; StorageUnsupported if it
        was not. Everything that keeps devices apart (batch numbers, keyring versions) rests on
        it, so storage without it is refused rather than used to split a workspace silently."""
        path = f"probes/{secrets.token_hex(8)}"
        self.blobs.put(path, b"probe", create=True)
        try:
            self.blobs.put(path, b"probe again", create=True)
        except AlreadyExistsError:
            self._probed_at = time.monotonic()
            return
        finally:
            self.blobs.delete([path])
        raise StorageUnsupported(
            f"{self.blobs.url} does not honour conditional writes: a put with If-None-Match: * "
            "(put-if-absent) overwrote an existing object. Devices syncing through it would "
            "overwrite each other's changes and keyring, so Cairn will not use it. Use storage "
            "that supports S3 conditional writes (AWS S3, Cloudflare R2, MinIO, SeaweedFS, or "
            "a folder), or upgrade the service or gateway in between."
        )

    def before_write(self) -> None:
        """Probe (first, then once every ``PROBE_EVERY``) and write or check the header."""
        if self._probed_at is None or time.monotonic() - self._probed_at > PROBE_EVERY:
            self.probe()
        if self._checked:
            return
        url = self.blobs.url
        try:
            self.blobs.put(HEADER, json.dumps({"format": FORMAT}).encode(), create=True)
        except AlreadyExistsError:
            try:
                found = whole_number(parse_json(self.blobs.get(HEADER))["format"])
            except (KeyError, TypeError, ValueError) as exc:
                raise SyncError(f"{HEADER} in {url} is not Cairn's") from exc
            if found > FORMAT:
                raise SchemaTooNew(
                    f"{url} was written by a newer Cairn (format {found}); upgrade Cairn"
                ) from None
        self._checked = True
