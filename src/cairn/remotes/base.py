"""The one narrow interface every sync remote implements (server, in-memory, object storage).

A remote stores opaque mutation envelopes (``cairn.protocol``) and hands them back in a stable
order after a cursor. It never sees plaintext: it cannot read payloads and must not need to.

Contract (checked by ``tests/remotes/test_conformance.py`` against every implementation):

- ``push`` stores a batch all-or-nothing and is idempotent by ``mutation_id``: pushing a stored
  mutation again stores nothing new and still succeeds. A malformed batch raises
  ``MutationRejected`` naming each bad mutation, and stores nothing.
- ``pull`` returns mutations after ``cursor`` (None = from the start) in the order they were
  stored; a mutation stored after a pull returned is never skipped by the next pull from the
  returned cursor. ``scopes`` keeps only mutations with one of those scope tags (or none).
  ``wait`` > 0 blocks up to that many seconds while nothing is available (long-poll).
- the keyring is one opaque blob with a version, replaced only by compare-and-swap, the key
  ids it revoked and its proof; every version is kept (``keyring_versions``, newest first).
  Once revoked, a push of a payload sealed under a key id is refused (``revoked_key``), by the
  revoked ids of the newest version the workspace's keys authenticate.
- a remote that can check a keyring version (a server) refuses one without a valid proof
  (``cairn.keyring_rules.accept``); one that cannot (a bucket anyone with write access may
  write to) stores what it is given, and devices never use a version they cannot authenticate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from cairn.protocol import KeyringBlob, KeyringProof, PullPage, PushResult, WireMutation

__all__ = ["Frames", "KeyringBlob", "KeyringCheck", "KeyringProof", "Remote"]

KeyringCheck = Callable[[KeyringBlob], bool]
"""Whether a keyring version is the workspace's own (signed by its master key)."""
KEYRING_WALK = 64
"""The most keyring versions a device looks back through for one it can authenticate."""


class Frames(Protocol):
    """Seals and opens whole objects bound to their names (``cairn.crypto.frames.Frames``)."""

    def seal(self, name: str, data: bytes) -> bytes: ...

    def open(self, name: str, sealed: bytes) -> bytes: ...


class Remote(Protocol):
    """Where a device's mutations meet every other device's."""

    @property
    def url(self) -> str:
        """Where this remote is, for messages (never holds a secret)."""
        ...

    @property
    def supports_long_poll(self) -> bool:
        """Whether ``pull(wait=...)`` waits at the remote for new changes (a server), so a
        background worker can keep one pull open; if not (object storage), it pulls by interval."""
        ...

    def push(self, mutations: Sequence[WireMutation]) -> PushResult: ...

    def push_size(self, mutation: WireMutation) -> int:
        """The bytes ``mutation`` adds to a push as this remote sends it: what a push's batches
        are measured in, so that each stays under the remote's limit on a request's size."""
        ...

    def pull(
        self,
        cursor: str | None,
        limit: int = 1000,
        scopes: Sequence[str] | None = None,
        wait: float = 0.0,
    ) -> PullPage: ...

    def get_keyring(self) -> KeyringBlob | None:
        """The newest keyring version (None: none yet), whether it can be trusted or not."""
        ...

    def keyring_versions(self, limit: int = KEYRING_WALK) -> list[KeyringBlob]:
        """Up to ``limit`` keyring versions, newest first."""
        ...

    def put_keyring(
        self,
        blob: bytes,
        expected_version: int | None,
        revoked: Sequence[int] = (),
        proof: KeyringProof | None = None,
    ) -> int:
        """Store the keyring, its revoked key ids and its proof (signed for the new version's
        number) as the next version if the newest is still ``expected_version`` (None: no
        keyring yet); returns the new version, or raises ``RemoteConflict`` (or, on a remote
        that checks, the error ``cairn.keyring_rules.accept`` refuses it with)."""
        ...

    def set_keyring_check(self, check: KeyringCheck) -> None:
        """The workspace's keys are open: a remote that enforces revoked key ids itself (object
        storage) takes them only from versions ``check`` accepts; a server ignores it."""
        ...

    def register_device(self, device_id: str, name: str) -> None: ...

    def unregister_device(self, device_id: str) -> None:
        """The device leaves the workspace: its record (name, read position) goes; what it
        pushed stays. An object remote's compaction then no longer waits for it."""
        ...

    def devices(self) -> dict[str, str]:
        """The name of each device registered here, by device id."""
        ...

    def mark_read(self, cursor: str) -> None:
        """This device has applied everything up to ``cursor``. A remote that keeps each
        device's read position (object storage, whose compaction needs it) records it; a server
        keeps none and ignores it."""
        ...

    def set_frames(self, frames: Frames) -> None:
        """The workspace's keys are open: a remote that stores objects of its own (a bucket,
        a folder) seals them with ``frames``; a server stores envelopes as sent and ignores it."""
        ...

    def status(self) -> dict[str, Any]: ...

    def close(self) -> None: ...
