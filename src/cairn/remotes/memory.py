"""An in-process remote: the reference implementation of the contract, used by tests.

Like a sync server, it checks every keyring version it is given (``cairn.keyring_rules``) and
keeps them all; ``rollback`` is what a server's administrator does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from cairn import keyring_rules
from cairn.errors import InvalidInput, NotFound, RemoteConflict
from cairn.protocol import (
    E2E,
    PullPage,
    PushResult,
    WireMutation,
    check_batch,
    check_pull_limit,
    json_size,
)
from cairn.remotes.base import KEYRING_WALK, Frames, KeyringBlob, KeyringCheck, KeyringProof


class MemoryRemote:
    """Mutations in a list, in push order; every method is thread-safe."""

    def __init__(self, mode: str = E2E) -> None:
        self.mode = mode
        self._log: list[WireMutation] = []
        self._ids: set[str] = set()
        self._keyrings: list[KeyringBlob] = []  # every version, oldest first
        self._devices: dict[str, str] = {}
        self._changed = threading.Condition()

    @property
    def supports_long_poll(self) -> bool:
        return True

    @property
    def url(self) -> str:
        return "memory://"

    def push_size(self, mutation: WireMutation) -> int:
        return json_size(mutation)  # no limit here: measured as a server's JSON form

    def push(self, mutations: Sequence[WireMutation]) -> PushResult:
        with self._changed:
            revoked = self._keyrings[-1].revoked if self._keyrings else ()
            check_batch(mutations, self.mode == E2E, revoked)
            fresh: list[WireMutation] = []
            for mutation in mutations:
                if mutation.mutation_id not in self._ids:
                    self._ids.add(mutation.mutation_id)
                    fresh.append(mutation.with_seq(len(self._log) + len(fresh) + 1))
            self._log.extend(fresh)
            if fresh:
                self._changed.notify_all()
            return PushResult(len(fresh), len(mutations) - len(fresh), len(self._log))

    def pull(
        self,
        cursor: str | None,
        limit: int = 1000,
        scopes: Sequence[str] | None = None,
        wait: float = 0.0,
    ) -> PullPage:
        check_pull_limit(limit)
        try:
            since = int(cursor or 0)
        except ValueError as exc:
            raise InvalidInput(f"cursor {cursor!r} is not one this remote gave out") from exc
        deadline = time.monotonic() + max(0.0, wait)
        with self._changed:
            while len(self._log) <= since and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
            wanted = set(scopes) if scopes is not None else None
            page = [
                m
                for m in self._log[since:]
                if wanted is None or m.scope is None or m.scope in wanted
            ][:limit]
            return PullPage.of(page, limit, len(self._log))

    def get_keyring(self) -> KeyringBlob | None:
        with self._changed:
            return self._keyrings[-1] if self._keyrings else None

    def keyring_versions(self, limit: int = KEYRING_WALK) -> list[KeyringBlob]:
        with self._changed:
            return self._keyrings[::-1][:limit]

    def put_keyring(
        self,
        blob: bytes,
        expected_version: int | None,
        revoked: Sequence[int] = (),
        proof: KeyringProof | None = None,
    ) -> int:
        with self._changed:
            current = self._keyrings[-1] if self._keyrings else None
            if (current.version if current else None) != expected_version:
                raise RemoteConflict(
                    "the keyring changed on the remote since it was read; read it again"
                )
            signature, verify_key = (proof.signature, proof.verify_key) if proof else (None, None)
            kept = keyring_rules.accept(current, blob, revoked, signature, verify_key)
            return self._append(blob, revoked, kept)

    def rollback(self, version: int, expected_version: int) -> int:
        """What a server's administrator does: version ``version`` again, as the next one."""
        with self._changed:
            if self._keyrings[-1].version != expected_version:
                raise RemoteConflict("the keyring changed since it was read; read it again")
            if not 1 <= version <= len(self._keyrings):
                raise NotFound(f"there is no keyring version {version}")
            restored = self._keyrings[version - 1]
            return self._append(restored.blob, restored.revoked, restored.proof)

    def _append(self, blob: bytes, revoked: Sequence[int], proof: KeyringProof | None) -> int:
        version = len(self._keyrings) + 1
        self._keyrings.append(KeyringBlob(blob, version, tuple(sorted(set(revoked))), proof))
        return version

    def set_keyring_check(self, check: KeyringCheck) -> None:
        return None  # it checks every version itself

    def register_device(self, device_id: str, name: str) -> None:
        with self._changed:
            self._devices[device_id] = name

    def unregister_device(self, device_id: str) -> None:
        with self._changed:
            self._devices.pop(device_id, None)

    def devices(self) -> dict[str, str]:
        with self._changed:
            return dict(self._devices)

    def mark_read(self, cursor: str) -> None:
        return None  # keeps everything, so needs no read positions

    def set_frames(self, frames: Frames) -> None:
        return None  # envelopes are sealed already; the remote adds no objects of its own

    def status(self) -> dict[str, Any]:
        with self._changed:
            return {
                "remote": self.url,
                "mode": self.mode,
                "latest_seq": len(self._log),
                "mutations": len(self._log),
                "devices": len(self._devices),
            }

    def close(self) -> None:
        return None
