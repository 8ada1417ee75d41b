"""A remote made of objects in storage the user owns: an S3 (or S3-compatible) bucket or a folder.

There is no server: every device reads and writes the objects directly (through ``obstore``,
which signs S3 requests and does put-if-absent natively). The layout, under the remote's prefix:

- ``cairn.json``: the format version (a newer one is refused, never misread);
- ``keyring/<version>``: one object per keyring version (the opaque blob and the revoked key
  ids); a new version is written only if absent and only over the latest, which makes the
  keyring's compare-and-swap;
- ``log/<device>/<n>``: immutable batches, each written once, put-if-absent, by its own device
  (numbered 1, 2, 3 ... without gaps); an upload cut short leaves no object or a whole one;
- ``devices/<device>``: each device's record (its name), written by that device only.

A reader's cursor is a version vector: for each device, the batch and the position in it that it
has read up to, so a batch written later is never skipped. Batches and device records are framed:
compressed, then (once the workspace's keys are open, ``frame_key``) sealed with AES-256-GCM bound
to the object's name, so object names and sizes are all the bucket learns. An object that fails
to open is skipped and listed in ``status()["skipped_objects"]``, never applied.

A bucket cannot hold a request open, so ``supports_long_poll`` is False: ``pull(wait=...)`` polls
every ``poll_every`` seconds, and a background worker pulls by interval instead.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import obstore
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from obstore.exceptions import AlreadyExistsError

from cairn.errors import (
    InvalidInput,
    RemoteConflict,
    RemoteUnreachable,
    SchemaTooNew,
    SyncError,
)
from cairn.protocol import (
    MAX_PULL_LIMIT,
    KeyringBlob,
    PullPage,
    PushResult,
    WireMutation,
    check_batch,
    many_from_json,
    to_json,
)

FORMAT = 1
HEADER = "cairn.json"
SEALED_FRAME = b"CAO1"
PLAIN_FRAME = b"CAP1"
_NUMBER = 12  # digits in a batch's name: ordered by name as by number
_CACHE = 256  # batches kept decoded (they never change)
T = TypeVar("T")


class ObjectRemote:
    """Sync through an obstore store (S3Store, LocalStore, MemoryStore)."""

    def __init__(
        self,
        store: Any,
        url: str,
        device_id: str | None = None,
        frame_key: bytes | None = None,
        poll_every: float = 0.5,
    ) -> None:
        self._store = store
        self._url = url
        self.device_id = device_id
        self.frame_key = frame_key
        """Seals batches and device records; set once the workspace's keys are open."""
        self.poll_every = poll_every
        self.skipped: dict[str, str] = {}
        self._lock = threading.Lock()
        self._batches: OrderedDict[str, list[WireMutation]] = OrderedDict()
        self._own: dict[str, set[str]] = {}  # a device's stored mutation ids (idempotent pushes)
        self._next: dict[str, int] = {}  # a device's next batch number
        self._checked = False

    @property
    def url(self) -> str:
        return self._url

    @property
    def supports_long_poll(self) -> bool:
        return False

    # --- push ---------------------------------------------------------------------------------

    def push(self, mutations: Sequence[WireMutation]) -> PushResult:
        ring = self.get_keyring()
        check_batch(mutations, True, ring.revoked if ring else ())
        devices = {m.device_id for m in mutations}
        device = self.device_id or (next(iter(devices)) if devices else None)
        if device is None:
            return PushResult(0, 0, 0)
        if devices - {device}:
            raise InvalidInput(f"a push to {self._url} carries one device's mutations")
        with self._lock:
            own = self._own_ids(device)
            fresh: list[WireMutation] = []
            seen: set[str] = set()
            for mutation in mutations:
                if mutation.mutation_id not in own and mutation.mutation_id not in seen:
                    seen.add(mutation.mutation_id)
                    fresh.append(mutation)
            if fresh:
                self._write_batch(device, fresh)
                own.update(seen)
        return PushResult(len(fresh), len(mutations) - len(fresh), 0)

    def _own_ids(self, device: str) -> set[str]:
        """The device's stored mutation ids, read once from its log (under the lock)."""
        if device not in self._own:
            names = self._batch_names(device)
            self._own[device] = {m.mutation_id for n in names for m in self._batch(device, n)}
            self._next[device] = (int(names[-1]) if names else 0) + 1
        return self._own[device]

    def _write_batch(self, device: str, batch: list[WireMutation]) -> None:
        self._ensure_header()
        body = json.dumps(to_json(batch), separators=(",", ":")).encode()
        while True:
            path = f"log/{device}/{self._next[device]:0{_NUMBER}d}"
            try:
                self._put(path, self._frame(path, body), create=True)
            except AlreadyExistsError:
                # Another process of this device wrote that number first: reread and go on.
                del self._own[device]
                self._own_ids(device)
                continue
            self._next[device] += 1
            self._remember(path, batch)
            return

    # --- pull ---------------------------------------------------------------------------------

    def pull(
        self,
        cursor: str | None,
        limit: int = 1000,
        scopes: Sequence[str] | None = None,
        wait: float = 0.0,
    ) -> PullPage:
        if not 1 <= limit <= MAX_PULL_LIMIT:
            raise InvalidInput(f"limit must be between 1 and {MAX_PULL_LIMIT}")
        position, count = _read_cursor(cursor)
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            page = self._page(position, count, limit, scopes)
            if page.mutations or page.has_more or time.monotonic() >= deadline:
                return page
            time.sleep(min(self.poll_every, max(0.0, deadline - time.monotonic())))

    def _page(
        self,
        position: dict[str, list[int]],
        count: int,
        limit: int,
        scopes: Sequence[str] | None,
    ) -> PullPage:
        """Up to ``limit`` mutations after ``position``, device by device in name order."""
        wanted = set(scopes) if scopes is not None else None
        position = {device: list(at) for device, at in position.items()}
        out: list[WireMutation] = []
        for device in self._devices_with_logs():
            batch_no, index = position.get(device, [0, 0])
            for name in self._batch_names(device, after=max(batch_no - 1, 0)):
                number = int(name)
                start = index if number == batch_no else 0
                batch = self._batch(device, name)
                for at in range(start, len(batch)):
                    if len(out) == limit:
                        return PullPage(out, _write_cursor(position, count), True)
                    position[device] = [number, at + 1]
                    count += 1
                    mutation = batch[at]
                    if wanted is None or mutation.scope is None or mutation.scope in wanted:
                        out.append(mutation.with_seq(count))
                position[device] = [number, len(batch)]
                index = 0
        return PullPage(out, _write_cursor(position, count), False)

    # --- keyring, devices, status ------------------------------------------------------------

    def get_keyring(self) -> KeyringBlob | None:
        versions = self._names("keyring/")
        if not versions:
            return None
        latest = versions[-1]
        try:
            data = json.loads(self._get(f"keyring/{latest}"))
            return KeyringBlob(
                base64.b64decode(data["blob"], validate=True),
                int(latest),
                tuple(sorted({int(k) for k in data["revoked_key_ids"]})),
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise SyncError(f"keyring/{latest} in {self._url} is damaged") from exc

    def put_keyring(
        self, blob: bytes, expected_version: int | None, revoked: Sequence[int] = ()
    ) -> int:
        current = self.get_keyring()
        if (current.version if current else None) != expected_version:
            raise RemoteConflict("the keyring changed on the remote since it was read; read again")
        version = (expected_version or 0) + 1
        self._ensure_header()
        record = {
            "blob": base64.b64encode(blob).decode("ascii"),
            "revoked_key_ids": sorted(set(revoked)),
        }
        try:
            self._put(f"keyring/{version:08d}", json.dumps(record).encode(), create=True)
        except AlreadyExistsError as exc:
            raise RemoteConflict("another device changed the keyring at the same time") from exc
        return version

    def register_device(self, device_id: str, name: str) -> None:
        self._ensure_header()
        path = f"devices/{device_id}"
        self._put(path, self._frame(path, json.dumps({"name": name}).encode()), create=False)

    def status(self) -> dict[str, Any]:
        devices = self._names("devices/")
        mutations = 0
        for device in self._devices_with_logs():
            for name in self._batch_names(device):
                mutations += len(self._batch(device, name))
        return {
            "remote": self._url,
            "mode": "e2e",
            "format": FORMAT,
            "latest_seq": mutations,
            "mutations": mutations,
            "devices": len(devices),
            "skipped_objects": dict(self.skipped),
        }

    def close(self) -> None:
        return None

    # --- objects ------------------------------------------------------------------------------

    def _devices_with_logs(self) -> list[str]:
        found = self._call(lambda: obstore.list_with_delimiter(self._store, prefix="log/"))
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in found["common_prefixes"])

    def _batch_names(self, device: str, after: int = 0) -> list[str]:
        """The device's batch numbers after ``after``, in order (listed from there on, so a
        long history is not listed again each pull; names that are not batch numbers are not
        Cairn's and are left alone)."""
        prefix = f"log/{device}/"
        names = self._names(prefix, f"{prefix}{after:0{_NUMBER}d}" if after else None)
        return [n for n in names if len(n) == _NUMBER and n.isdigit() and int(n) > after]

    def _names(self, prefix: str, offset: str | None = None) -> list[str]:
        def listing() -> list[str]:
            items = obstore.list(self._store, prefix=prefix, offset=offset).collect()
            return sorted(str(item["path"])[len(prefix) :] for item in items)

        return self._call(listing)

    def _batch(self, device: str, name: str) -> list[WireMutation]:
        """One batch, decoded (cached: batches never change); a damaged or foreign one is
        skipped (an empty batch) and recorded."""
        path = f"log/{device}/{name}"
        with_cache = self._batches.get(path)
        if with_cache is not None:
            return with_cache
        try:
            mutations = many_from_json(json.loads(self._unframe(path, self._get(path))))
            if any(m.device_id != device for m in mutations):
                raise ValueError("it holds another device's mutations")
        except (ValueError, TypeError, KeyError, InvalidInput, zlib.error) as exc:
            self.skipped[path] = str(exc) or type(exc).__name__
            mutations = []
        self._remember(path, mutations)
        return mutations

    def _remember(self, path: str, batch: list[WireMutation]) -> None:
        self._batches[path] = batch
        while len(self._batches) > _CACHE:
            self._batches.popitem(last=False)

    def _frame(self, path: str, body: bytes) -> bytes:
        packed = zlib.compress(body, 6)
        if self.frame_key is None:
            return PLAIN_FRAME + packed
        nonce = os.urandom(12)
        return SEALED_FRAME + nonce + AESGCM(self.frame_key).encrypt(nonce, packed, path.encode())

    def _unframe(self, path: str, data: bytes) -> bytes:
        magic, rest = data[:4], data[4:]
        if magic == PLAIN_FRAME:
            return zlib.decompress(rest)
        if magic != SEALED_FRAME:
            raise ValueError("not a Cairn object")
        if self.frame_key is None:
            raise ValueError("sealed, and this remote has no key to open it")
        try:
            packed = AESGCM(self.frame_key).decrypt(rest[:12], rest[12:], path.encode())
        except InvalidTag as exc:
            raise ValueError("it does not open with this workspace's key (damaged, moved)") from exc
        return zlib.decompress(packed)

    def _ensure_header(self) -> None:
        if self._checked:
            return
        try:
            self._put(HEADER, json.dumps({"format": FORMAT}).encode(), create=True)
        except AlreadyExistsError:
            try:
                found = int(json.loads(self._get(HEADER))["format"])
            except (KeyError, TypeError, ValueError) as exc:
                raise SyncError(f"{HEADER} in {self._url} is not Cairn's") from exc
            if found > FORMAT:
                raise SchemaTooNew(
                    f"{self._url} was written by a newer Cairn (format {found}); upgrade Cairn"
                ) from None
        self._checked = True

    def _get(self, path: str) -> bytes:
        return self._call(lambda: bytes(obstore.get(self._store, path).bytes()))

    def _put(self, path: str, data: bytes, create: bool) -> None:
        self._call(lambda: obstore.put(self._store, path, data, mode="create" if create else None))

    def _call(self, work: Callable[[], T]) -> T:
        """Run an obstore call; failures of the storage become RemoteUnreachable."""
        try:
            return work()
        except (AlreadyExistsError, FileNotFoundError):
            raise
        except OSError as exc:
            raise RemoteUnreachable(f"cannot reach {self._url}: {exc}") from exc
        except Exception as exc:  # obstore's own errors (network, auth) are not OSErrors
            if type(exc).__module__.startswith("obstore"):
                raise RemoteUnreachable(f"{self._url}: {exc}") from exc
            raise


def _read_cursor(cursor: str | None) -> tuple[dict[str, list[int]], int]:
    if cursor is None:
        return {}, 0
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
        position = {
            str(device): [int(at[0]), int(at[1])] for device, at in dict(data["at"]).items()
        }
        return position, int(data["n"])
    except (ValueError, TypeError, KeyError, IndexError, binascii.Error) as exc:
        raise InvalidInput(f"cursor {cursor!r} is not one this remote gave out") from exc


def _write_cursor(position: dict[str, list[int]], count: int) -> str:
    data = json.dumps({"at": position, "n": count}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(data.encode()).decode("ascii")
