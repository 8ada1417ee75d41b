"""Fuzzing the objects of a bucket or folder remote: anyone with write access may put anything.

Every object the remote reads is replaced, one at a time, by a mutated one (sealed under the
right name, so the parser behind the seal is what is fuzzed; or not sealed at all): the batches
of a log, a snapshot's manifest and parts, device records, the header, the keyring versions,
the compaction lock, and object names that are not Cairn's. Pulling, pushing, compacting and
reading the status then return valid values or raise a CairnError; a damaged batch is skipped and
reported while the other logs still arrive; nothing inflates past a size limit.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from typing import Any

import obstore
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from obstore.store import MemoryStore

from cairn.crypto.frames import Frames
from cairn.errors import InvalidInput, SyncError
from cairn.protocol import problem
from cairn.remotes.objects import FRAME, MAX_INFLATED, ObjectRemote
from cairn.remotes.objects.cursors import read_cursor, write_cursor

from ..fuzzing import ci, fragments, mutated, mutated_json, parse_or_refuse, soak
from .test_conformance import pull_all
from .test_objects import of

URL = "memory://fuzz"
FRAMES = Frames(bytes(range(32)))
HEAD = struct.Struct(">I")


def _template() -> dict[str, bytes]:
    """A small remote: two devices' logs, a snapshot of them, and a batch written after it."""
    store = MemoryStore()
    a = ObjectRemote(store, URL, "dev-a", FRAMES, publish_every=0)
    b = ObjectRemote(store, URL, "dev-b", FRAMES, publish_every=0)
    a.register_device("dev-a", "laptop")
    a.put_keyring(b"an opaque keyring", None, [])
    a.push([of("dev-a", n) for n in range(3)])
    b.push([of("dev-b", n) for n in range(2)])
    for device in (a, b):
        device.pull(device.pull(None).cursor)  # read to the end, and said so
    ObjectRemote(store, URL, frames=FRAMES).compact()
    a.push([of("dev-a", n) for n in range(3, 5)])
    b.push([of("dev-b", n) for n in range(2, 4)])
    return {
        str(item["path"]): bytes(obstore.get(store, item["path"]).bytes())
        for item in obstore.list(store).collect()
    }


TEMPLATE = _template()
PART = next(p for p in TEMPLATE if p.startswith("snapshots/") and "/" in p[len("snapshots/") :])
MANIFEST = next(p for p in TEMPLATE if p.startswith("snapshots/") and p != PART)
BATCH_A = "log/dev-a/000000000002"
BATCH_B = "log/dev-b/000000000002"
PLAIN = ["cairn.json", next(p for p in TEMPLATE if p.startswith("keyring/"))]
FRAMED = [MANIFEST, "devices/dev-a", "devices/dev-b"]
PACKED = [BATCH_A, PART]
assert set(PLAIN + FRAMED + PACKED + [BATCH_B]) <= set(TEMPLATE), sorted(TEMPLATE)


def _opened(path: str) -> bytes:
    return FRAMES.open(path, TEMPLATE[path][len(FRAME) :])


def _sealed(path: str, body: bytes) -> bytes:
    return FRAME + FRAMES.seal(path, body)


def _split(body: bytes) -> tuple[Any, bytes]:
    """A packed batch's rows (the compressed JSON head) and its payloads."""
    (size,) = HEAD.unpack_from(body)
    return json.loads(zlib.decompress(body[HEAD.size : HEAD.size + size])), body[HEAD.size + size :]


def _packed(rows_json: bytes, payloads: bytes) -> bytes:
    head = zlib.compress(rows_json)
    return HEAD.pack(len(head)) + head + payloads


@st.composite
def damaged(draw: st.DrawFn) -> tuple[str, bytes]:
    """(path, bytes): one object of the template replaced by a mutated one."""
    path = draw(st.sampled_from(PLAIN + FRAMED + PACKED))
    how = draw(st.sampled_from(["fields", "fields", "bytes", "unsealed"]))
    if how == "unsealed":
        return path, draw(st.binary(max_size=200) | mutated(TEMPLATE[path]))
    if path in PLAIN:
        doc = json.loads(TEMPLATE[path])
        text = draw(mutated_json(doc)) if how == "fields" else draw(mutated(TEMPLATE[path]))
        return path, text.encode() if isinstance(text, str) else text
    body = _opened(path)
    if path in FRAMED:
        doc = json.loads(zlib.decompress(body))
        if how == "fields":
            return path, _sealed(path, zlib.compress(draw(mutated_json(doc)).encode()))
        return path, _sealed(path, draw(mutated(body)))
    if how == "fields":
        rows, payloads = _split(body)
        rows_json = draw(mutated_json(rows)).encode()
        return path, _sealed(path, _packed(rows_json, draw(st.just(payloads) | mutated(payloads))))
    return path, _sealed(path, draw(mutated(body)))


def _bucket(changes: dict[str, bytes]) -> MemoryStore:
    store = MemoryStore()
    for path, data in {**TEMPLATE, **changes}.items():
        obstore.put(store, path, data)
    return store


def _valid(mutations: list[Any]) -> None:
    for m in mutations:
        assert problem(m, sealed=True) is None


def _check_bucket(path: str, data: bytes) -> None:
    store = _bucket({path: data})
    reader = ObjectRemote(store, URL, "dev-r", FRAMES)
    got = parse_or_refuse(pull_all, reader, None, 3)
    if path == BATCH_A:
        assert got is not None  # a damaged batch is skipped (a damaged snapshot is refused)
    if got is not None:
        _valid(got)
        if path not in (MANIFEST, PART):  # a snapshot that lies about what it covers leaves
            # gaps in every log (held back and reported as missing); anything else leaves
            # the other device's log whole
            from_b = [m.mutation_id for m in got if m.device_id == "dev-b"]
            assert from_b == [f"dev-b-{n:05d}" for n in range(4)]
    parse_or_refuse(reader.status)
    writer = ObjectRemote(store, URL, "dev-a", FRAMES)
    parse_or_refuse(writer.push, [of("dev-a", 50)])
    ring = parse_or_refuse(writer.get_keyring)
    if ring is not None:
        assert all(0 <= k < 2**32 for k in ring.revoked)
    parse_or_refuse(ObjectRemote(store, URL, frames=FRAMES).compact)


def _packed_with(path: str, rows: Any) -> tuple[str, bytes]:
    _rows, payloads = _split(_opened(path))
    return path, _sealed(path, _packed(json.dumps(rows).encode(), payloads))


def _framed_with(path: str, doc: Any) -> tuple[str, bytes]:
    return path, _sealed(path, zlib.compress(json.dumps(doc).encode()))


MANIFEST_DOC = json.loads(zlib.decompress(_opened(MANIFEST)))
PART_ROWS = _split(_opened(PART))[0]
RECORD_DOC = json.loads(zlib.decompress(_opened("devices/dev-a")))


@ci(150)
@given(found=damaged())
@example(found=_framed_with(MANIFEST, {**MANIFEST_DOC, "mutations": float("inf")}))
@example(found=_framed_with(MANIFEST, {**MANIFEST_DOC, "covers": {"dev-a": 1e400}}))
@example(found=_packed_with(PART, [[float("inf"), 0, *PART_ROWS[0][2:]], *PART_ROWS[1:]]))
@example(found=_packed_with(BATCH_A, [[1, "m\n", *_split(_opened(BATCH_A))[0][0][2:]]]))
@example(found=_framed_with("devices/dev-a", {**RECORD_DOC, "at": {"dev-a": [1e400, 0]}}))
@example(found=_framed_with("devices/dev-a", {**RECORD_DOC, "updated_at": 1e400}))
@example(found=_framed_with("devices/dev-a", {**RECORD_DOC, "at": {"dev-a": {}}}))  # KeyError
@example(found=("devices/dev-a", _sealed("devices/dev-a", b"x" * 10)))  # not zlib at all
@example(found=("cairn.json", b'{"format": 1e400}'))
@example(found=("cairn.json", b"[" * 50_000 + b"]" * 50_000))
@example(found=(PLAIN[1], b'{"blob": "", "revoked_key_ids": [1e400]}'))
def test_a_damaged_object_is_skipped_or_refused(found: tuple[str, bytes]) -> None:
    _check_bucket(*found)


@pytest.mark.parametrize(
    "lock",
    [b'{"owner": "x", "expires_at": 1e400}', b"[" * 50_000 + b"]" * 50_000, b"\xff", b"[]"],
)
def test_a_lock_that_is_not_ours_is_taken_over_or_waited_for(lock: bytes) -> None:
    store = _bucket({"compact.lock": lock})
    report = parse_or_refuse(ObjectRemote(store, URL, frames=FRAMES).compact)
    assert report is not None and report["snapshot"] is not None


@ci(60)
@given(
    folder=st.sampled_from(["log/dev-a/", "snapshots/", "keyring/", "devices/"]),
    name=st.text(alphabet="0123456789\u00b2\u0661\uff11-x_", min_size=1, max_size=14).filter(
        lambda name: not (name.isascii() and name.isdigit())  # Cairn's own names are ASCII digits
    ),
)
@example(folder="log/dev-a/", name="\u00b2" * 12)  # isdigit() yes, int() no
@example(folder="log/dev-a/", name="\u0660" * 11 + "\u0661")  # int() reads it as batch 1
@example(folder="snapshots/", name="\u00b2")
@example(folder="keyring/", name="notes.txt")
def test_objects_named_like_no_cairn_object_are_left_alone(folder: str, name: str) -> None:
    store = _bucket({folder + name: b"someone else's file"})
    reader = ObjectRemote(store, URL, "dev-r", FRAMES)
    got = pull_all(reader, None, 3)
    assert sorted(m.mutation_id for m in got) == sorted(
        [f"dev-a-{n:05d}" for n in range(5)] + [f"dev-b-{n:05d}" for n in range(4)]
    )
    assert reader.get_keyring() is not None


VALID_CURSOR = ObjectRemote(_bucket({}), URL, "dev-r", FRAMES).pull(None, 4).cursor
CURSOR_DOC = json.loads(base64.urlsafe_b64decode(VALID_CURSOR))


def _cursor(doc: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode()


def _check_cursor(cursor: str) -> None:
    reader = ObjectRemote(_bucket({}), URL, "dev-r", FRAMES)
    page = parse_or_refuse(reader.pull, cursor, 5, refuse=InvalidInput)
    if page is not None:
        _valid(list(page.mutations))


@ci(150)
@given(
    cursor=st.one_of(
        mutated_json(CURSOR_DOC).map(lambda text: base64.urlsafe_b64encode(text.encode()).decode()),
        mutated(VALID_CURSOR.encode()).map(lambda b: b.decode("latin-1")),
        st.text(max_size=40),
        fragments,
    )
)
@example(cursor=_cursor({"at": {"dev-a": [float("inf"), 0]}, "n": 0}))  # OverflowError
@example(cursor=_cursor({"at": {"dev-a": [1, 0]}, "n": 2.5}))  # int() truncated it
@example(cursor=base64.urlsafe_b64encode(b"[" * 50_000 + b"]" * 50_000).decode())
def test_a_cursor_is_read_or_refused(cursor: str) -> None:
    _check_cursor(cursor)


@ci(50)
@given(
    position=st.dictionaries(
        st.text(min_size=1, max_size=20), st.tuples(st.integers(0, 2**40), st.integers(0, 2**31))
    ),
    count=st.integers(0, 2**62),
)
def test_any_cursor_reads_back_as_written(position: dict[str, tuple[int, int]], count: int) -> None:
    at = {device: list(numbers) for device, numbers in position.items()}
    assert read_cursor(write_cursor(at, count)) == (at, count)


def _bomb(size: int) -> bytes:
    return zlib.compress(b" " * size, 9)


def test_a_batch_that_inflates_past_the_limit_is_skipped_unread() -> None:
    _rows, payloads = _split(_opened(BATCH_A))
    bomb = _bomb(MAX_INFLATED + 1)
    store = _bucket({BATCH_A: _sealed(BATCH_A, HEAD.pack(len(bomb)) + bomb + payloads)})
    reader = ObjectRemote(store, URL, "dev-r", FRAMES)
    assert len(pull_all(reader)) == 7  # dev-a's second batch (two mutations) is skipped
    assert "inflates" in reader.status()["skipped_objects"][BATCH_A]


def test_a_device_record_or_manifest_that_inflates_past_the_limit_is_refused() -> None:
    bomb = _bomb(MAX_INFLATED + 1)
    store = _bucket({"devices/dev-a": _sealed("devices/dev-a", bomb)})
    remote = ObjectRemote(store, URL, frames=FRAMES)
    remote.compact()
    assert "inflates" in remote.status()["skipped_objects"]["devices/dev-a"]
    store = _bucket({MANIFEST: _sealed(MANIFEST, bomb)})
    with pytest.raises(SyncError, match="inflates"):
        pull_all(ObjectRemote(store, URL, "dev-r", FRAMES))


def test_the_undamaged_template_reads_whole() -> None:
    got = pull_all(ObjectRemote(_bucket({}), URL, "dev-r", FRAMES), None, 3)
    assert sorted(m.mutation_id for m in got) == sorted(
        [f"dev-a-{n:05d}" for n in range(5)] + [f"dev-b-{n:05d}" for n in range(4)]
    )


@pytest.mark.slow
@pytest.mark.timeout(1800)
@soak(10_000)
@given(found=damaged(), cursor=st.text(max_size=40) | fragments)
def test_objects_soak(found: tuple[str, bytes], cursor: str) -> None:
    _check_bucket(*found)
    _check_cursor(cursor)
