"""Sync through object storage end to end: real stores, the real embedder, a real folder and a
real S3 server (moto), no fakes.

Each device is its own store file with its own ObjectRemote on the same bucket or folder, as
on separate machines, and gets its keys by joining the workspace. Devices write and sync at
once; a compaction runs while they write; a client is killed (SIGKILL) between the puts of a
sync; a truncated and a foreign object land in the log mid-sync. Every replica must end
identical, holding every memory any device made exactly once and nothing from an object that
does not open. Seeds are fixed and named in each test's parameters, so a failure replays (the
threads' interleaving itself is the operating system's).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import obstore
import pytest
from obstore.store import LocalStore, S3Store

from cairn.crypto.frames import Frames
from cairn.crypto.keyring import Unlocked
from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.errors import RemoteUnreachable
from cairn.protocol import WireMutation
from cairn.remotes.objects import ObjectRemote
from cairn.store.db import Database
from cairn.sync.engine import Syncer, local_status
from cairn.sync.keys import join

from ..conftest import S3_CREDENTIALS, S3Server
from .conftest import FAST_KDF, PASSPHRASE, snapshot, sync_all

WRITES = 15
T = TypeVar("T")
TAGS = ["ops", "db", "web", "infra", "ci"]
SUBJECTS = [
    "the deploy window",
    "the cache TTL",
    "the package manager",
    "the Postgres version",
    "feature flags",
    "the on-call rota",
    "the staging database",
    "log retention",
]


# --- where the devices meet ----------------------------------------------------------------------


@dataclass
class Shared:
    """One bucket or folder; ``open`` gives a new obstore store on it (one per device)."""

    url: str
    open: Callable[[], Any]
    child: dict[str, str]
    """What a subprocess needs to open the same store (see CHILD)."""


def s3_store(s3: S3Server, bucket: str) -> S3Store:
    return S3Store(
        bucket,
        endpoint=s3.endpoint,
        access_key_id=S3_CREDENTIALS["aws_access_key_id"],
        secret_access_key=S3_CREDENTIALS["aws_secret_access_key"],
        region=S3_CREDENTIALS["region_name"],
        client_options={"allow_http": True},
    )


@pytest.fixture
def new_shared(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], Shared]:
    """Makes a fresh, empty bucket (``"s3"``) or folder (``"folder"``)."""
    made = 0

    def make(kind: str) -> Shared:
        nonlocal made
        made += 1
        if kind == "folder":
            folder = tmp_path / f"remote-{made}"
            folder.mkdir()
            return Shared(
                folder.as_uri(),
                lambda: LocalStore(folder),
                {"kind": kind, "folder": str(folder)},
            )
        s3: S3Server = request.getfixturevalue("s3_server")
        bucket = s3.new_bucket()
        return Shared(
            f"s3://{bucket}",
            lambda: s3_store(s3, bucket),
            {"kind": kind, "bucket": bucket, "endpoint": s3.endpoint},
        )

    return make


@dataclass
class Device:
    name: str
    store: Store
    remote: ObjectRemote
    syncer: Syncer
    keys: Unlocked


@pytest.fixture
def open_device(tmp_path: Path, embedder: OnnxEmbedder) -> Iterator[Callable[..., Device]]:
    """A device of a workspace: its own store file and its own ObjectRemote, keys by joining."""
    opened: list[Device] = []

    def open_(shared: Shared, name: str, passphrase: str = PASSPHRASE) -> Device:
        store = Store(Database(tmp_path / f"{name}.db"), embedder, project="p", source=name)
        # publish_every=0: each pull records its read position, so compaction sees readers.
        remote = ObjectRemote(
            shared.open(), shared.url, device_id=store.device_id(), publish_every=0.0
        )
        keys = join(remote, passphrase, kdf=FAST_KDF)[0]
        device = Device(name, store, remote, Syncer(store, remote, keys, None, page_size=7), keys)
        opened.append(device)
        return device

    yield open_
    for device in opened:
        device.syncer.close()
        device.store.close()


def text(device: str, n: int) -> str:
    return f"{device} noted #{n}: {SUBJECTS[n % len(SUBJECTS)]} changed in sprint {n * 7 + 3}"


def contents(store: Store) -> list[str]:
    """Every live memory's content, sorted (a duplicate shows up twice)."""
    rows = store.db.conn.execute("SELECT content FROM memories WHERE deleted = 0").fetchall()
    return sorted(r[0] for r in rows)


def raw_log(shared: Shared, keys: Unlocked) -> list[WireMutation]:
    """Every mutation the remote holds, read back by a reader that only has the frame key."""
    reader = ObjectRemote(shared.open(), shared.url, frames=Frames(keys.frame_key))
    got: list[WireMutation] = []
    cursor = None
    while True:
        page = reader.pull(cursor, 1000)
        got.extend(page.mutations)
        cursor = page.cursor
        if not page.has_more:
            break
    status = reader.status()
    assert status["skipped_objects"] == {}
    assert status["missing_objects"] == {}
    return got


def assert_converged(devices: list[Device], expected: list[str]) -> None:
    """Every replica holds exactly ``expected`` (once each) and all agree on everything."""
    first = snapshot(devices[0].store)
    for device in devices:
        assert contents(device.store) == sorted(expected), device.name
        assert snapshot(device.store) == first, f"{device.name} differs from {devices[0].name}"
        assert device.syncer.dead_letters() == [], device.name
        assert local_status(device.store)["pending"] == 0, device.name


# --- several devices writing at once -------------------------------------------------------------


def write_concurrently(
    open_device: Callable[..., Device],
    shared: Shared,
    names: list[str],
    seed: int,
    middle: Callable[[], T] | None = None,
) -> tuple[list[Device], T | None]:
    """Each device (a thread: it joins, then remembers WRITES memories, pushing and pulling at
    random between writes) and, once every device has pushed half its writes, ``middle`` on a
    thread of its own: they wait for it to start, then go on beside it. Returns the devices
    and what ``middle`` returned."""
    halfway = [threading.Event() for _ in names]
    started = threading.Event()

    def run(index: int) -> Device:
        try:
            rng = random.Random(seed * 100 + index)
            device = open_device(shared, names[index])
            for n in range(WRITES):
                tags = rng.sample(TAGS, rng.randint(0, 2))
                device.store.remember(text(device.name, n), tags=tags)
                action = rng.choice(["push", "pull", "now", "none"])
                if action == "push":
                    device.syncer.push()
                elif action == "pull":
                    device.syncer.pull()
                elif action == "now":
                    device.syncer.now()
                if n == WRITES // 2:
                    device.syncer.push()  # so the middle finds every device in the log
                    halfway[index].set()
                    assert started.wait(120), "the middle did not start"
            return device
        finally:
            halfway[index].set()  # a failed device does not hold the middle back

    def run_middle() -> T | None:
        try:
            for event in halfway:
                assert event.wait(120), "a device did not reach half its writes"
        finally:
            started.set()
        return middle() if middle is not None else None

    with ThreadPoolExecutor(max_workers=len(names) + 1) as pool:
        writers: list[Future[Device]] = [pool.submit(run, i) for i in range(len(names))]
        in_middle = pool.submit(run_middle)
        devices = [w.result() for w in writers]
        found = in_middle.result()
    sync_all(*(d.syncer for d in devices))
    return devices, found


@pytest.mark.parametrize(("kind", "seed"), [("s3", 1), ("folder", 2)])
def test_three_devices_writing_at_once_converge(
    kind: str,
    seed: int,
    new_shared: Callable[[str], Shared],
    open_device: Callable[..., Device],
) -> None:
    shared = new_shared(kind)
    names = ["ann", "bob", "cyd"]
    devices, _ = write_concurrently(open_device, shared, names, seed)
    expected = [text(name, n) for name in names for n in range(WRITES)]
    assert_converged(devices, expected)
    for device in devices:
        assert device.remote.status()["skipped_objects"] == {}
    # Each memory went out once: one mutation each, none stored twice.
    log = raw_log(shared, devices[0].keys)
    assert len({m.mutation_id for m in log}) == len(log) == len(expected)


@pytest.mark.parametrize(
    ("kind", "seed", "stale_after"),
    [("s3", 3, 0.0), ("folder", 4, 0.0), ("s3", 9, 3600.0), ("folder", 10, 3600.0)],
)
def test_a_compaction_while_devices_write_keeps_them_converging(
    kind: str,
    seed: int,
    stale_after: float,
    new_shared: Callable[[str], Shared],
    open_device: Callable[..., Device],
) -> None:
    """stale_after=0 counts no device as a reader: every batch the snapshot covers is removed
    under the writers' feet, so those still reading it must go on from the snapshot. An hour
    keeps the batches some device has not read past (from the positions each pull publishes)."""
    shared = new_shared(kind)
    names = ["ann", "bob", "cyd"]

    def compact() -> dict[str, Any]:
        compactor = ObjectRemote(shared.open(), shared.url)
        join(compactor, PASSPHRASE, kdf=FAST_KDF)
        return compactor.compact(stale_after=stale_after)

    devices, report = write_concurrently(open_device, shared, names, seed, compact)
    assert report is not None
    assert report["new_snapshot"] is True
    if stale_after == 0.0:
        assert report["removed_batches"] >= len(names)
    else:
        assert report["readers"], "no device had published how far it read"
    expected = [text(name, n) for name in names for n in range(WRITES)]
    assert_converged(devices, expected)
    # A fourth device, new after the compaction, reads the snapshot and the batches after it.
    late = open_device(shared, "dee")
    late.syncer.pull()
    assert_converged([*devices, late], expected)
    assert late.remote.status()["snapshot"] == report["snapshot"]


@pytest.mark.parametrize("kind", ["s3", "folder"])
def test_a_push_starting_while_a_compaction_removes_its_batches_goes_through(
    kind: str,
    new_shared: Callable[[str], Shared],
    open_device: Callable[..., Device],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A device's next `cairn sync now` (a new process: a new ObjectRemote that first reads
    which mutations its log holds) while another device runs `cairn sync compact`. The fault
    hook only chooses the moment: the real compaction runs just before the device reads its
    first batch back."""
    shared = new_shared(kind)
    ann = open_device(shared, "ann")
    for n in range(3):
        ann.store.remember(text("ann", n))
        ann.syncer.push()
    ann.syncer.pull()
    ann.syncer.pull()  # its read position, past its own batches, is published
    again = ObjectRemote(shared.open(), shared.url, device_id=ann.syncer.device_id)
    syncer = Syncer(ann.store, again, join(again, PASSPHRASE, kdf=FAST_KDF)[0], None)
    ann.store.remember(text("ann", 3))
    compactor = ObjectRemote(shared.open(), shared.url)
    join(compactor, PASSPHRASE, kdf=FAST_KDF)
    real_get = obstore.get
    compacted: list[dict[str, Any]] = []

    def get(store: Any, path: str, *args: Any, **kwargs: Any) -> Any:
        if not compacted and path.startswith(f"log/{ann.syncer.device_id}/"):
            compacted.append({})  # the compaction reads batches too: run it once
            compacted.append(compactor.compact())
        return real_get(store, path, *args, **kwargs)

    monkeypatch.setattr(obstore, "get", get)
    try:
        syncer.push()
    except RemoteUnreachable:  # a transient failure, the usual retry takes it
        syncer.push()
    monkeypatch.undo()
    assert compacted[-1]["removed_batches"] == 3
    log = raw_log(shared, ann.keys)
    assert sorted(m.mutation_id for m in log) == sorted({m.mutation_id for m in log})
    assert len(log) == 4
    late = open_device(shared, "bob")
    late.syncer.pull()
    assert contents(late.store) == sorted(text("ann", n) for n in range(4))


@pytest.mark.parametrize(("kind", "seed"), [("s3", 5), ("folder", 6)])
def test_truncated_and_foreign_objects_in_the_log_are_skipped_and_never_applied(
    kind: str,
    seed: int,
    new_shared: Callable[[str], Shared],
    open_device: Callable[..., Device],
) -> None:
    shared = new_shared(kind)
    names = ["ann", "bob", "cyd"]
    # A real batch of this workspace (made in a scratch folder, then cut short) and a real
    # batch of another workspace, each under its own device's log name.
    planted = open_device(shared, "planted")
    elsewhere = new_shared("folder")
    stranger = open_device(elsewhere, "stranger", passphrase="another workspace")
    scratch = new_shared("folder")
    planted_remote = ObjectRemote(scratch.open(), scratch.url, device_id=planted.syncer.device_id)
    planted_remote.set_frames(Frames(planted.keys.frame_key))
    planted_syncer = Syncer(planted.store, planted_remote, planted.keys, None)
    for device in (planted, stranger):
        for n in range(3):
            device.store.remember(text(device.name, n), tags=["secret"])
    planted_syncer.push()
    stranger.syncer.push()
    truncated = f"log/{planted.syncer.device_id}/000000000001"
    foreign = f"log/{stranger.syncer.device_id}/000000000001"
    cut = bytes(obstore.get(scratch.open(), truncated).bytes())
    other = bytes(obstore.get(elsewhere.open(), foreign).bytes())

    def plant() -> None:
        target = shared.open()
        obstore.put(target, truncated, cut[: len(cut) // 2])
        obstore.put(target, foreign, other)

    devices, _ = write_concurrently(open_device, shared, names, seed, plant)
    secrets = {text(d.name, n) for d in (planted, stranger) for n in range(3)}
    expected = [text(name, n) for name in names for n in range(WRITES)]
    assert_converged(devices, expected)
    for device in devices:
        status = device.remote.status()
        assert set(status["skipped_objects"]) == {truncated, foreign}, device.name
        assert status["missing_objects"] == {}
        assert not set(contents(device.store)) & secrets, device.name


# --- a client killed between the puts of a sync --------------------------------------------------

CHILD = """
import json, os, signal, sys
from pathlib import Path

import obstore
from obstore.store import LocalStore, S3Store

from cairn.embedding.onnx import OnnxEmbedder
from cairn.remotes.objects import ObjectRemote
from cairn.device_store import Store
from cairn.store.db import Database
from cairn.sync.engine import Syncer
from cairn.sync.keys import open_keys

job = json.loads(sys.argv[1])
where = job["remote"]
if where["kind"] == "folder":
    bucket = LocalStore(where["folder"])
else:
    bucket = S3Store(
        where["bucket"],
        endpoint=where["endpoint"],
        access_key_id=job["aws"]["aws_access_key_id"],
        secret_access_key=job["aws"]["aws_secret_access_key"],
        region=job["aws"]["region_name"],
        client_options={"allow_http": True},
    )
real_put = obstore.put
calls = {"tried": 0, "done": 0}


def put(*args, **kwargs):
    # "before": killed as the n-th put starts; "after": killed once the n-th put has stored.
    calls["tried"] += 1
    if job["when"] == "before" and calls["tried"] == job["kill_at"]:
        os.kill(os.getpid(), signal.SIGKILL)
    result = real_put(*args, **kwargs)
    calls["done"] += 1
    if job["when"] == "after" and calls["done"] == job["kill_at"]:
        os.kill(os.getpid(), signal.SIGKILL)
    return result


obstore.put = put
store = Store(Database(Path(job["db"])), OnnxEmbedder(), project="p", source="crashy")
remote = ObjectRemote(bucket, job["url"], device_id=store.device_id(), publish_every=0.0)
keys = open_keys(store, remote, bytes.fromhex(job["master"]), job["keyring_id"])
Syncer(store, remote, keys, None, batch_size=3, page_size=4).now()
store.close()
print(json.dumps(calls))
"""


@dataclass
class CrashLab:
    """One workspace: a peer that pushed already, and a device whose sync a child runs."""

    shared: Shared
    peer: Device
    db: Path
    expected: list[str]
    script: Path
    tmp: Path

    def sync(self, when: str = "never", kill_at: int = 0) -> subprocess.CompletedProcess[str]:
        """Run the device's sync (push, pull, push) in a fresh process, killed as told."""
        job = {
            "remote": self.shared.child,
            "url": self.shared.url,
            "aws": S3_CREDENTIALS,
            "db": str(self.db),
            "master": self.peer.keys.master.hex(),
            "keyring_id": self.peer.keys.keyring_id,
            "when": when,
            "kill_at": kill_at,
        }
        return subprocess.run(
            [sys.executable, str(self.script), json.dumps(job)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.tmp,
        )


@pytest.fixture
def crash_lab(
    tmp_path: Path,
    embedder: OnnxEmbedder,
    new_shared: Callable[[str], Shared],
    open_device: Callable[..., Device],
) -> Callable[[str, str], CrashLab]:
    script = tmp_path / "sync_child.py"
    script.write_text(CHILD)

    def make(kind: str, name: str) -> CrashLab:
        shared = new_shared(kind)
        peer = open_device(shared, f"{name}-peer")
        for n in range(4):
            peer.store.remember(text(peer.name, n), tags=["peer"])
        peer.syncer.push()
        db = tmp_path / f"{name}-crashy.db"
        with Store(Database(db), embedder, project="p", source="crashy") as crashy:
            for n in range(8):  # three batches of batch_size=3
                crashy.remember(text(f"{name}-crashy", n), tags=["crashy"])
        expected = [text(peer.name, n) for n in range(4)]
        expected += [text(f"{name}-crashy", n) for n in range(8)]
        return CrashLab(shared, peer, db, expected, script, tmp_path)

    return make


def check_recovered(lab: CrashLab, open_device: Callable[..., Device], name: str) -> None:
    """After a killed sync and a whole one: the remote holds every mutation once, and the
    crashed device, its peer and a device new to the workspace all hold the same memories."""
    log = raw_log(lab.shared, lab.peer.keys)
    ids = Counter(m.mutation_id for m in log)
    assert [i for i, seen in ids.items() if seen > 1] == []
    assert len(log) == len(lab.expected)
    fresh = open_device(lab.shared, f"{name}-fresh")
    fresh.syncer.pull()
    lab.peer.syncer.pull()
    with Store(Database(lab.db), lab.peer.store.embedder, project="p") as crashy:
        assert local_status(crashy)["pending"] == 0
        assert contents(crashy) == sorted(lab.expected)
        crashed = snapshot(crashy)
    assert_converged([lab.peer, fresh], lab.expected)
    assert snapshot(fresh.store) == crashed


def crash_and_recover(lab: CrashLab, when: str, kill_at: int) -> bool:
    """Kill the device's sync at put ``kill_at``, then run it whole; False when the sync
    finished before reaching that put (nothing was killed)."""
    first = lab.sync(when, kill_at)
    if first.returncode == 0:
        calls = json.loads(first.stdout)
        assert calls["tried" if when == "before" else "done"] < kill_at
        return False
    assert first.returncode == -signal.SIGKILL, first.stderr
    again = lab.sync()
    assert again.returncode == 0, again.stderr
    return True


@pytest.mark.parametrize("kind", ["folder", "s3"])
@pytest.mark.parametrize("when", ["after", "before"])
def test_a_sync_killed_between_any_two_puts_resumes_without_loss_or_duplicates(
    kind: str,
    when: str,
    crash_lab: Callable[[str, str], CrashLab],
    open_device: Callable[..., Device],
) -> None:
    """Kill at put 1, 2, 3 ... (each on a fresh workspace) until a sync completes unkilled."""
    for kill_at in range(1, 100):
        name = f"{when}-{kill_at}"
        lab = crash_lab(kind, name)
        killed = crash_and_recover(lab, when, kill_at)
        check_recovered(lab, open_device, name)
        if not killed:
            break
    assert kill_at > 5, "a sync of three batches and three pages makes more puts than that"
