"""The one contract every remote keeps (``cairn.remotes.base``), run against each implementation.

Written against the ``Remote`` interface only: a new remote (S3, folder) joins by adding a
param to the ``remote`` fixture; the sync server runs it on each of its storage backends. A
remote must be usable from two threads at once (the long-poll tests push while another thread
waits).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import obstore
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from obstore.store import LocalStore, S3Store

from cairn.crypto import keyring
from cairn.crypto.frames import Frames
from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.errors import CairnError, InvalidInput, MutationRejected, RemoteConflict
from cairn.protocol import KeyringProof, WireMutation
from cairn.remotes.base import KeyringBlob, Remote
from cairn.remotes.http import HttpRemote
from cairn.remotes.memory import MemoryRemote
from cairn.remotes.objects import ObjectRemote
from cairn.store import outbox
from cairn.store.db import Database
from cairn.sync.engine import Syncer
from cairn.sync.envelopes import Envelopes
from cairn.sync.keys import join, open_keys

from ..conftest import S3_CREDENTIALS, envelope
from ..sync.conftest import FAST_KDF, PASSPHRASE

SCOPE_A = "aaaaaaaa"
SCOPE_B = "bbbbbbbb"


@pytest.fixture
def server_backend(request: pytest.FixtureRequest) -> str:
    """The sync server's storage: PostgreSQL for the ``http-postgres`` remote, else SQLite."""
    return "postgres" if request.node.callspec.params.get("remote") == "http-postgres" else "sqlite"


@pytest.fixture(params=["memory", "http", "http-postgres", "folder", "s3"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Remote]:
    made: Remote
    if request.param == "memory":
        made = MemoryRemote()
    elif request.param in ("http", "http-postgres"):
        server = request.getfixturevalue("sync_server")
        made = HttpRemote(server.url, server.admin_key)
    elif request.param == "folder":
        folder = LocalStore(tmp_path / "remote", mkdir=True)
        made = ObjectRemote(folder, (tmp_path / "remote").as_uri(), frames=Frames(os.urandom(32)))
    else:
        bucket = request.getfixturevalue("s3_server").bucket()
        made = ObjectRemote(bucket, "s3://test-bucket", frames=Frames(os.urandom(32)))
    yield made
    made.close()


def mutation(
    n: int, scope: str | None = None, payload: bytes | None = None, key_id: int = 1
) -> WireMutation:
    return WireMutation(
        mutation_id=f"m-{n:05d}",
        device_id="dev-a",
        hlc=f"{1_700_000_000_000 + n:013d}-0000-dev-a",
        entity_id=f"e-{n % 7}",
        scope=scope,
        payload=envelope(payload if payload is not None else f"sealed {n}".encode(), key_id),
    )


def pull_all(remote: Remote, cursor: str | None = None, limit: int = 1000) -> list[WireMutation]:
    got: list[WireMutation] = []
    while True:
        page = remote.pull(cursor, limit)
        got.extend(page.mutations)
        cursor = page.cursor
        if not page.has_more:
            return got


def test_pulled_mutations_are_byte_identical_to_pushed(remote: Remote) -> None:
    pushed = [
        mutation(1, payload=b""),
        mutation(2, payload=bytes(range(256))),
        mutation(3, scope=SCOPE_A, payload="héllo ✓".encode()),
        mutation(4, payload=b"\x00" * 70_000),
    ]
    result = remote.push(pushed)
    assert (result.stored, result.duplicates) == (4, 0)
    pulled = pull_all(remote)
    assert [m.with_seq(0) for m in pulled] == [m.with_seq(0) for m in pushed]
    seqs = [m.seq for m in pulled]
    assert all(isinstance(s, int) for s in seqs) and seqs == sorted(set(seqs))  # type: ignore[type-var]


def test_pushing_again_stores_nothing_twice(remote: Remote) -> None:
    batch = [mutation(n) for n in range(5)]
    assert remote.push(batch).stored == 5
    again = remote.push([*batch, mutation(5), mutation(5)])
    assert (again.stored, again.duplicates) == (1, 6)
    ids = [m.mutation_id for m in pull_all(remote)]
    assert ids == [f"m-{n:05d}" for n in range(6)]


def test_pages_come_in_push_order_and_resume_at_the_cursor(remote: Remote) -> None:
    for start in (0, 10, 20):
        remote.push([mutation(n) for n in range(start, start + 10)])
    first = remote.pull(None, limit=12)
    assert len(first.mutations) == 12 and first.has_more
    second = remote.pull(first.cursor, limit=12)
    assert len(second.mutations) == 12 and second.has_more
    third = remote.pull(second.cursor, limit=12)
    assert len(third.mutations) == 6 and not third.has_more
    ids = [m.mutation_id for p in (first, second, third) for m in p.mutations]
    assert ids == [f"m-{n:05d}" for n in range(30)]
    empty = remote.pull(third.cursor, limit=12)
    assert list(empty.mutations) == [] and not empty.has_more and empty.cursor == third.cursor


def test_a_cursor_never_skips_what_is_pushed_after_it(remote: Remote) -> None:
    remote.push([mutation(n) for n in range(3)])
    cursor = remote.pull(None).cursor
    remote.push([mutation(n) for n in range(3, 5)])
    page = remote.pull(cursor)
    assert [m.mutation_id for m in page.mutations] == ["m-00003", "m-00004"]


def test_scopes_keep_their_own_and_untagged_mutations(remote: Remote) -> None:
    remote.push([mutation(1, SCOPE_A), mutation(2, SCOPE_B), mutation(3), mutation(4, SCOPE_A)])

    def ids(scopes: list[str] | None) -> list[str]:
        page = remote.pull(None, scopes=scopes)
        assert not page.has_more
        return [m.mutation_id for m in page.mutations]

    assert ids([SCOPE_A]) == ["m-00001", "m-00003", "m-00004"]
    assert ids([SCOPE_B]) == ["m-00002", "m-00003"]
    assert ids([SCOPE_A, SCOPE_B]) == ids(None) == ["m-00001", "m-00002", "m-00003", "m-00004"]
    assert ids([]) == ["m-00003"]
    # The cursor passes the filtered-out tail, so the next pull does not scan it again.
    remote.push([mutation(5, SCOPE_B)])
    page = remote.pull(None, scopes=[SCOPE_A])
    assert remote.pull(page.cursor, scopes=[SCOPE_A]).mutations == []
    assert [m.mutation_id for m in remote.pull(page.cursor).mutations] == []


def test_a_malformed_batch_is_refused_whole_naming_each_bad_mutation(remote: Remote) -> None:
    good = mutation(1)
    old = WireMutation("m-old", "dev-a", good.hlc, "e-1", None, envelope(), version=99)
    no_clock = WireMutation("m-noclock", "dev-a", "yesterday", "e-1", None, envelope())
    with pytest.raises(MutationRejected) as refused:
        remote.push([good, old, no_clock])
    assert set(refused.value.rejected) == {"m-old", "m-noclock"}
    assert refused.value.rejected["m-old"][0] == "unsupported_version"
    assert refused.value.rejected["m-noclock"][0] == "invalid_mutation"
    assert pull_all(remote) == []
    assert remote.status()["latest_seq"] == 0


def test_a_payload_that_is_not_a_sealed_envelope_is_refused(remote: Remote) -> None:
    plain = WireMutation("m-plain", "dev-a", mutation(1).hlc, "e-1", None, b'{"content": "x"}')
    with pytest.raises(MutationRejected) as refused:
        remote.push([mutation(1), plain])
    assert refused.value.rejected["m-plain"][0] == "unsealed_payload"
    assert "sealed envelope" in refused.value.rejected["m-plain"][1]
    assert pull_all(remote) == []


def test_bad_limits_and_cursors_are_invalid_input(remote: Remote) -> None:
    with pytest.raises(InvalidInput):
        remote.pull(None, limit=0)
    with pytest.raises(InvalidInput):
        remote.pull("not-a-cursor")


def in_thread(work: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    box: list[object] = []
    thread = threading.Thread(target=lambda: box.append(work()), daemon=True)
    thread.start()
    return thread, box


def test_a_long_poll_returns_soon_after_a_push(remote: Remote) -> None:
    remote.push([mutation(1)])
    cursor = remote.pull(None).cursor
    started = time.monotonic()
    thread, box = in_thread(lambda: remote.pull(cursor, wait=20))
    time.sleep(0.3)
    assert thread.is_alive(), "the long-poll returned before anything was pushed"
    remote.push([mutation(2)])
    thread.join(timeout=10)
    assert not thread.is_alive(), "the long-poll did not wake on the push"
    assert time.monotonic() - started < 10
    (page,) = box
    assert [m.mutation_id for m in page.mutations] == ["m-00002"]  # type: ignore[attr-defined]


def test_a_long_poll_returns_empty_at_its_timeout(remote: Remote) -> None:
    remote.push([mutation(1)])
    cursor = remote.pull(None).cursor
    started = time.monotonic()
    page = remote.pull(cursor, wait=0.6)
    assert 0.5 <= time.monotonic() - started < 5
    assert list(page.mutations) == [] and page.cursor == cursor and not page.has_more


def signed_put(
    remote: Remote,
    ring: keyring.Keyring,
    master: bytes,
    expected: int | None,
    revoked: Sequence[int] = (),
) -> int:
    """Store ``ring`` as the next version the way a device does: signed for its number."""
    blob = ring.to_bytes()
    proof = keyring.sign(master, ring.keyring_id, (expected or 0) + 1, blob, revoked)
    return remote.put_keyring(blob, expected, revoked, proof)


def trusting(remote: Remote, keys: keyring.Unlocked) -> None:
    """Open the workspace's keys for ``remote`` as a device does (``set_keyring_check``)."""

    def check(found: KeyringBlob) -> bool:
        try:
            keyring.authenticate(found, keys.master, keys.keyring_id)
        except CairnError:
            return False
        return True

    remote.set_keyring_check(check)


def test_the_keyring_is_replaced_only_by_compare_and_swap_and_every_version_kept(
    remote: Remote,
) -> None:
    ring, keys, _recovery = keyring.create(PASSPHRASE, FAST_KDF)
    assert remote.get_keyring() is None and remote.keyring_versions() == []
    assert signed_put(remote, ring, keys.master, None) == 1
    with pytest.raises(RemoteConflict):
        signed_put(remote, ring, keys.master, None)
    with pytest.raises(RemoteConflict):
        signed_put(remote, ring, keys.master, 7)
    first = remote.get_keyring()
    assert first is not None and (first.blob, first.version) == (ring.to_bytes(), 1)
    assert first.proof is not None and first.proof.version == 1
    assert keyring.authenticate(first, keys.master, ring.keyring_id)[1] == keys
    changed = keyring.change_passphrase(ring, keys, "another passphrase")
    assert signed_put(remote, changed, keys.master, 1) == 2
    second = remote.get_keyring()
    assert second is not None and (second.blob, second.version) == (changed.to_bytes(), 2)
    assert remote.keyring_versions() == [second, first]
    assert remote.keyring_versions(limit=1) == [second]


def test_pushes_sealed_under_a_revoked_key_id_are_refused(remote: Remote) -> None:
    ring, keys, _recovery = keyring.create(PASSPHRASE, FAST_KDF)
    trusting(remote, keys)
    signed_put(remote, ring, keys.master, None)
    remote.push([mutation(1, payload=b"one")])
    rotated, keys = keyring.rotate(ring, keys)
    assert signed_put(remote, rotated, keys.master, 1, revoked=[1]) == 2
    assert remote.get_keyring().revoked == (1,)  # type: ignore[union-attr]
    with pytest.raises(MutationRejected) as refused:
        remote.push(
            [
                mutation(2, payload=b"old key", key_id=1),
                mutation(3, payload=b"new key", key_id=2),
            ]
        )
    ((refused_id, (code, message)),) = refused.value.rejected.items()
    assert (refused_id, code) == ("m-00002", "revoked_key") and "revoked" in message
    assert [m.mutation_id for m in pull_all(remote)] == ["m-00001"]  # none of the batch stored
    remote.push([mutation(3, payload=b"new key", key_id=2)])
    # What was stored under key 1 before the revocation is still served.
    assert [m.payload for m in pull_all(remote)][0] == envelope(b"one", key_id=1)
    # A later keyring update keeps whatever revocations it is given (here: the same).
    changed = keyring.change_passphrase(rotated, keys, "another passphrase")
    assert signed_put(remote, changed, keys.master, 2, revoked=[1, 1]) == 3
    assert remote.get_keyring().revoked == (1,)  # type: ignore[union-attr]


def test_status_counts_devices_and_mutations(remote: Remote) -> None:
    remote.register_device("dev-a", "laptop")
    remote.register_device("dev-b", "desktop")
    remote.register_device("dev-a", "laptop, renamed")
    remote.push([mutation(n) for n in range(3)])
    status = remote.status()
    assert (status["devices"], status["mutations"], status["latest_seq"]) == (2, 3, 3)
    # Names, for people (the conflict view says which device wrote which version).
    assert remote.devices() == {"dev-a": "laptop, renamed", "dev-b": "desktop"}


def test_a_device_that_leaves_is_no_longer_listed_but_what_it_pushed_stays(
    remote: Remote,
) -> None:
    remote.register_device("dev-a", "laptop")
    remote.register_device("ci-1", "ephemeral CI")
    remote.push([mutation(n) for n in range(2)])
    remote.unregister_device("ci-1")
    remote.unregister_device("ci-1")  # leaving twice changes nothing
    remote.unregister_device("never-seen")
    assert remote.devices() == {"dev-a": "laptop"}
    assert remote.status()["devices"] == 1
    assert len(pull_all(remote)) == 2


def test_the_url_names_the_remote_without_secrets(remote: Remote) -> None:
    assert remote.url and "cairn_" not in remote.url


# --- the keyring against a write key without the master key --------------------------------
#
# Whoever may write to a remote (a sync server's write key, anyone with write access to a
# bucket or folder) but does not hold the workspace's master key tries every keyring write it
# can; afterwards every device must still sync, a key rotation must still work, and a new
# device must still join with the passphrase.

ATTACKS = [
    "garbage_blob",
    "another_workspace",
    "replayed_older_version",
    "huge_revoked_list",
    "revoked_current_key",
    "forged_proof",
    "missing_proof",
]


@dataclass
class Workspace:
    """One workspace on one kind of remote: devices open their own remote; ``write`` is what a
    write key (or a bucket writer) can send: a keyring record as the remote stores it."""

    kind: str
    open: Callable[[], Remote]
    write: Callable[[dict[str, Any]], None]


@pytest.fixture(params=["memory", "http", "folder", "s3"])
def workspace(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Workspace]:
    kind = request.param
    opened: list[Remote] = []

    def track(made: Remote) -> Remote:
        opened.append(made)
        return made

    if kind == "memory":
        shared = MemoryRemote()

        def write_memory(record: dict[str, Any]) -> None:
            proof = None
            if record.get("signature") and record.get("verify_key"):
                number = (record["expected_version"] or 0) + 1
                signature, key = (bytes.fromhex(record[k]) for k in ("signature", "verify_key"))
                proof = KeyringProof(signature, key, number)
            with contextlib.suppress(CairnError):  # refusing it is what a server should do
                shared.put_keyring(
                    base64.b64decode(record["blob"]),
                    record["expected_version"],
                    record["revoked_key_ids"],
                    proof,
                )

        yield Workspace(kind, lambda: shared, write_memory)
        return
    if kind == "http":
        server = request.getfixturevalue("sync_server")
        device_key, attacker_key = server.new_key(), server.new_key()

        def write_http(record: dict[str, Any]) -> None:
            body = {k: v for k, v in record.items() if v is not None or k == "expected_version"}
            httpx.put(
                f"{server.url}/v1/keyring",
                json=body,
                headers={"Authorization": f"Bearer {attacker_key}"},
                timeout=30,
            )  # whatever the answer: refusing it is what a server should do

        yield Workspace(kind, lambda: track(HttpRemote(server.url, device_key)), write_http)
    else:
        if kind == "folder":
            folder = tmp_path / "remote"

            def bucket() -> Any:
                return LocalStore(folder, mkdir=True)

            url = folder.as_uri()
        else:
            s3 = request.getfixturevalue("s3_server")
            name = s3.new_bucket()

            def bucket() -> Any:
                return S3Store(
                    name,
                    endpoint=s3.endpoint,
                    access_key_id=S3_CREDENTIALS["aws_access_key_id"],
                    secret_access_key=S3_CREDENTIALS["aws_secret_access_key"],
                    region=S3_CREDENTIALS["region_name"],
                    client_options={"allow_http": True},
                )

            url = f"s3://{name}"

        def write_object(record: dict[str, Any]) -> None:
            number = (record["expected_version"] or 0) + 1
            stored = {"blob": record["blob"], "revoked_key_ids": record["revoked_key_ids"]}
            stored.update({k: v for k, v in _proof_args(record).items() if v})
            obstore.put(bucket(), f"keyring/{number:08d}", json.dumps(stored).encode())

        yield Workspace(kind, lambda: track(ObjectRemote(bucket(), url)), write_object)
    for made in opened:
        made.close()


def _proof_args(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in ("signature", "verify_key") if record.get(k) is not None}


@dataclass
class Member:
    """A device that joined: its store and the master key it kept (never the passphrase)."""

    store: Store
    master: bytes
    keyring_id: str


def _sync_round(workspace: Workspace, member: Member) -> dict[str, Any]:
    """One `cairn sync now` as a device runs it: open the remote, reopen the keyring with the
    saved master key, push, pull, push."""
    remote = workspace.open()
    keys = open_keys(member.store, remote, member.master, member.keyring_id)
    syncer = Syncer(member.store, remote, keys)
    return syncer.now()


def _attack(workspace: Workspace, attack: str, first: KeyringBlob) -> None:
    """What a write key can send, as the keyring's next version."""
    remote = workspace.open()
    found = remote.get_keyring()
    assert found is not None
    record = {**_as_record(found), "expected_version": found.version}  # its proof kept
    current = keyring.Keyring.from_bytes(found.blob).current
    forger = Ed25519PrivateKey.generate()
    if attack == "garbage_blob":
        record["blob"] = base64.b64encode(b"\x00garbage, not a keyring\xff" * 40).decode()
    elif attack == "another_workspace":
        theirs, _unlocked, _recovery = keyring.create("the attacker's passphrase", FAST_KDF)
        record["blob"] = base64.b64encode(theirs.to_bytes()).decode()
    elif attack == "replayed_older_version":
        record.update(_as_record(first))
    elif attack == "huge_revoked_list":
        record["revoked_key_ids"] = [k for k in range(1, 10_001) if k != current]
    elif attack == "revoked_current_key":
        record["revoked_key_ids"] = [current]
    elif attack == "forged_proof":
        record["revoked_key_ids"] = [current]
        record["verify_key"] = forger.public_key().public_bytes_raw().hex()
        record["signature"] = forger.sign(b"anything at all").hex()
    elif attack == "missing_proof":
        record["revoked_key_ids"] = [current]
        record.pop("signature", None)
        record.pop("verify_key", None)
    workspace.write(record)


def _as_record(found: KeyringBlob) -> dict[str, Any]:
    """A keyring version exactly as it was stored (what a replay sends again)."""
    record: dict[str, Any] = {
        "blob": base64.b64encode(found.blob).decode(),
        "revoked_key_ids": list(found.revoked),
    }
    proof = getattr(found, "proof", None)
    if proof is not None:
        record["signature"] = proof.signature.hex()
        record["verify_key"] = proof.verify_key.hex()
    return record


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_write_key_cannot_stop_any_device_from_syncing(
    workspace: Workspace, attack: str, tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    def member(name: str, **join_args: Any) -> Member:
        store = Store(Database(tmp_path / f"{name}.db"), embedder, project="p", source=name)
        stores.append(store)
        keys, recovery = join(workspace.open(), **join_args)
        if recovery is not None:
            recoveries.append(recovery)
        return Member(store, keys.master, keys.keyring_id)

    stores: list[Store] = []
    recoveries: list[str] = []
    try:
        a = member("a", passphrase=PASSPHRASE, kdf=FAST_KDF)
        b = member("b", passphrase=PASSPHRASE)
        a.store.remember("Written before the attack on device A")
        _sync_round(workspace, a), _sync_round(workspace, b)
        first = workspace.open().get_keyring()
        assert first is not None
        # A second version (a passphrase change), so a replay has an older one to send.
        remote = workspace.open()
        Envelopes(remote, open_keys(a.store, remote, a.master, a.keyring_id)).change_passphrase(
            PASSPHRASE + " v2"
        )

        _attack(workspace, attack, first)

        a.store.remember("Written after the attack on device A")
        b.store.remember("Written after the attack on device B")
        for device in (a, b, a):
            report = _sync_round(workspace, device)
            assert report["push"]["dead_lettered"] == 0, report
            assert report["push_after_pull"]["dead_lettered"] == 0, report
            assert report["pull"]["failed"] == 0, report
        # A legitimate rotation still works, and both devices go on syncing under the new key.
        remote = workspace.open()
        Envelopes(remote, open_keys(a.store, remote, a.master, a.keyring_id)).rotate()
        a.store.remember("Written under the rotated key on device A")
        b.store.remember("Written under the rotated key on device B")
        for device in (a, b, a):
            report = _sync_round(workspace, device)
            assert report["push"]["dead_lettered"] == 0, report
            assert report["pull"]["failed"] == 0, report
        expected = {m.content for m in a.store.list()}
        assert len(expected) == 5
        assert {m.content for m in b.store.list()} == expected
        assert not any(syncer_letters(d) for d in (a, b))
        # A new device joins with the (changed) passphrase, and another with the recovery key.
        for c in (member("c", passphrase=PASSPHRASE + " v2"), member("d", recovery=recoveries[0])):
            report = _sync_round(workspace, c)
            assert report["pull"]["failed"] == 0, report
            assert {m.content for m in c.store.list()} == expected
    finally:
        for store in stores:
            store.close()


def syncer_letters(member: Member) -> list[object]:
    with member.store.db.read() as conn:
        return list(outbox.dead_letters(conn))
