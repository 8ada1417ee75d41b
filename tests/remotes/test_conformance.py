"""The one contract every remote keeps (``cairn.remotes.base``), run against each implementation.

Written against the ``Remote`` interface only: a new remote (S3, folder) joins by adding a
param to the ``remote`` fixture; the sync server runs it on each of its storage backends. A
remote must be usable from two threads at once (the long-poll tests push while another thread
waits).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from obstore.store import LocalStore

from cairn.crypto.frames import Frames
from cairn.errors import InvalidInput, MutationRejected, RemoteConflict
from cairn.protocol import WireMutation
from cairn.remotes.base import KeyringBlob, Remote
from cairn.remotes.http import HttpRemote
from cairn.remotes.memory import MemoryRemote
from cairn.remotes.objects import ObjectRemote

from ..conftest import envelope

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


def test_the_keyring_is_replaced_only_by_compare_and_swap(remote: Remote) -> None:
    assert remote.get_keyring() is None
    assert remote.put_keyring(b"ring-1", None) == 1
    with pytest.raises(RemoteConflict):
        remote.put_keyring(b"stale", None)
    with pytest.raises(RemoteConflict):
        remote.put_keyring(b"stale", 7)
    assert remote.get_keyring() == KeyringBlob(b"ring-1", 1)
    assert remote.put_keyring(bytes(range(256)), 1) == 2
    assert remote.get_keyring() == KeyringBlob(bytes(range(256)), 2)


def test_pushes_sealed_under_a_revoked_key_id_are_refused(remote: Remote) -> None:
    remote.put_keyring(b"ring", None)
    remote.push([mutation(1, payload=b"one")])
    assert remote.put_keyring(b"ring-2", 1, revoked=[1]) == 2
    assert remote.get_keyring() == KeyringBlob(b"ring-2", 2, (1,))
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
    assert remote.put_keyring(b"ring-3", 2, revoked=[1, 1]) == 3
    assert remote.get_keyring() == KeyringBlob(b"ring-3", 3, (1,))


def test_status_counts_devices_and_mutations(remote: Remote) -> None:
    remote.register_device("dev-a", "laptop")
    remote.register_device("dev-b", "desktop")
    remote.register_device("dev-a", "laptop, renamed")
    remote.push([mutation(n) for n in range(3)])
    status = remote.status()
    assert (status["devices"], status["mutations"], status["latest_seq"]) == (2, 3, 3)


def test_the_url_names_the_remote_without_secrets(remote: Remote) -> None:
    assert remote.url and "cairn_" not in remote.url
