"""Sync through object storage: push N memories into a bucket or a folder, pull them on a new
device, before and after compaction.

Two remotes in the same run, both opened with ``open_url`` as ``cairn sync setup`` opens them:
an S3-compatible server (moto's, in-memory buckets, ``python -m moto.server`` in a subprocess on
127.0.0.1, so that its CPU and its GIL are not this process's, as a real S3 service's are not)
and a folder on this disk (``file://``). Device A is a fresh copy of the cached N-memory store
(real vectors, every memory pending); every device joins with the end-to-end keys from ``join``
(a fast KDF: the benchmark measures sync, not Argon2) and registers, as setup does.

Each remote is filled twice from a fresh bucket or folder: in bulk (``Syncer`` defaults: up to
5,000 memories or 6 MiB per object) and in small batches (``--small-batch`` memories per push
batch, as an agent's autosync sends them: many small objects). For each: push memories/s; the
objects in the bucket or folder afterwards and bytes stored per memory (every object's size,
from listing the bucket or walking the folder, divided by N); a new device (empty store, same
passphrase) pulls everything (memories/s); it then publishes that it has read everything (one
more, empty pull) and ``compact()`` runs (timed; objects before and after); another new device
pulls everything again, now from the snapshot. Also reported: obstore calls per phase (counted
by standing in for the module the remote calls through) and CPU seconds of client and S3 server.

    .venv/bin/python bench/bench_objects.py [--memories 10000] [--small-batch 20] [--runs 1]
        [--remotes s3 folder] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import httpx
import obstore
from threadpoolctl import threadpool_limits

from cairn.crypto.keyring import KdfParams
from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.remotes.objects import ObjectRemote, blobs, open_url
from cairn.sync.engine import Syncer
from cairn.sync.keys import join
from common import (
    CACHE,
    BackgroundProcess,
    cached_store,
    free_port,
    log,
    new_embedder,
    open_store,
    peak_rss_mib,
    print_table,
    uncommitted_src,
    write_results,
)

PASSPHRASE = "a benchmark passphrase"
KDF = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)  # keyring setup only, not measured
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "cairn-bench",
    "AWS_SECRET_ACCESS_KEY": "cairn-bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
REMOTE_NAMES = {"s3": "S3 (moto)", "folder": "folder"}
BULK = 5000  # Syncer's default batch_size: a bulk push is cut by its 6 MiB budget first
PHASES = {
    "push": "push",
    "pull": "pull (new device)",
    "compact": "compact",
    "pull_compacted": "pull after compaction",
}


# --- the S3 server -------------------------------------------------------------------------------


class MotoServer(BackgroundProcess):
    """moto's S3 server in a subprocess on 127.0.0.1 (buckets held in its memory)."""

    def __init__(self, log_path: Path) -> None:
        super().__init__(log_path)
        self.endpoint = ""

    def __enter__(self) -> MotoServer:
        port = free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        self.launch(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            lambda: httpx.get(self.endpoint, timeout=1).status_code > 0,
            "moto's server",
        )
        return self

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint)

    def new_bucket(self) -> str:
        name = f"cairn-bench-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str) -> dict[str, int]:
        """Every object in ``bucket`` and its size."""
        found: dict[str, int] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
            found.update((o["Key"], int(o["Size"])) for o in page.get("Contents", []))
        return found

    def reset(self) -> None:
        """Drop every bucket (moto's own API), so one run's objects do not weigh on the next."""
        httpx.post(f"{self.endpoint}/moto-api/reset", timeout=30).raise_for_status()


@dataclass
class Place:
    """The bucket or folder one run fills, and how to list what it holds."""

    url: str
    endpoint: str | None
    listing: Callable[[], dict[str, int]]

    def open(self, device_id: str) -> ObjectRemote:
        return open_url(self.url, self.endpoint, device_id, create=True)

    def inventory(self, memories: int) -> dict[str, Any]:
        """Objects and bytes held, in all and by kind (``log``, ``snapshots``, ``devices`` ...)."""
        found = self.listing()
        kinds: dict[str, list[int]] = {}
        for name, size in found.items():
            kind = name.split("/", 1)[0] if "/" in name else name
            tally = kinds.setdefault(kind, [0, 0])
            tally[0] += 1
            tally[1] += size
        total = sum(found.values())
        return {
            "objects": len(found),
            "bytes": total,
            "bytes_per_memory": round(total / memories, 1),
            "by_kind": {k: {"objects": c, "bytes": b} for k, (c, b) in sorted(kinds.items())},
        }


def new_place(kind: str, folder: Path, moto: MotoServer | None) -> Place:
    if kind == "s3":
        assert moto is not None
        bucket = moto.new_bucket()
        return Place(f"s3://{bucket}", moto.endpoint, lambda: moto.objects(bucket))

    def walk() -> dict[str, int]:
        return {
            str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()
        }

    return Place(folder.as_uri(), None, walk)


# --- obstore calls -------------------------------------------------------------------------------


class ObstoreCalls:
    """The obstore calls the object remote makes, counted by standing in for the ``obstore``
    module in ``cairn.remotes.objects.blobs``. One call is one request, except a listing, which S3
    pages by 1,000 keys."""

    NAMES = ("get", "put", "list", "list_with_delimiter", "delete")

    def __init__(self) -> None:
        self.real = obstore
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()  # the pull fetches its next page on a second thread
        for name in self.NAMES:
            setattr(self, name, self._counted(name))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def _counted(self, name: str) -> Callable[..., Any]:
        call = getattr(self.real, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.counts[name] += 1
            return call(*args, **kwargs)

        return counted

    def install(self) -> None:
        blobs.obstore = self  # type: ignore[assignment]

    def since(self, before: Counter[str]) -> dict[str, int]:
        return {name: self.counts[name] - before[name] for name in self.NAMES}


class Phase:
    """Wall time, client CPU, S3 server CPU and obstore calls of one timed block."""

    def __init__(self, calls: ObstoreCalls, moto: MotoServer | None) -> None:
        self.calls = calls
        self.moto = moto
        self.result: dict[str, Any] = {}

    def __enter__(self) -> Phase:
        self._calls = Counter(self.calls.counts)
        self._server = self.moto.cpu_seconds() if self.moto else 0.0
        self._cpu = time.process_time()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        seconds = time.perf_counter() - self._start
        self.result = {
            "seconds": round(seconds, 3),
            "client_cpu_s": round(time.process_time() - self._cpu, 2),
            "server_cpu_s": round(self.moto.cpu_seconds() - self._server, 2) if self.moto else 0,
            "calls": self.calls.since(self._calls),
        }


# --- one run -------------------------------------------------------------------------------------


def one_run(
    kind: str,
    batch: int,
    n: int,
    run: int,
    embedder: OnnxEmbedder,
    tmp: Path,
    moto: MotoServer | None,
    calls: ObstoreCalls,
) -> dict[str, Any]:
    label = f"{kind}-{batch}-{run}"
    a_path = tmp / f"a-{label}.db"
    shutil.copyfile(cached_store(n), a_path)  # a fresh copy: every memory pending again
    place = new_place(kind, tmp / f"folder-{label}", moto)

    store_a = open_store(a_path, embedder)
    with store_a.db.read() as conn:
        memories = conn.execute("SELECT count(*) FROM memories").fetchone()[0]
    device_a = store_a.device_id()
    remote_a = place.open(device_a)
    keys = join(remote_a, PASSPHRASE, kdf=KDF)[0]  # creates the keyring
    remote_a.register_device(device_a, "bench-a")
    syncer_a = Syncer(store_a, remote_a, keys, batch_size=batch)  # a new target: queues all
    with Phase(calls, moto) as push:
        pushed = syncer_a.push()
    if pushed.pushed != memories or pushed.dead_lettered:
        raise SystemExit(f"push sent {pushed} for {memories} memories")
    stored = place.inventory(memories)

    # A new device pulls everything. Its pull published only the position after its first page
    # (positions go out with a pull's cursor, at most every 5 s), so one more (empty) pull
    # publishes the end, as its next sync would: compaction removes only what readers passed.
    store_b, syncer_b, pull = pull_fresh(place, tmp / f"b-{label}.db", embedder, calls, moto)
    check = verify(store_a, store_b)
    syncer_b.remote.publish_every = 0.0  # type: ignore[attr-defined]
    if syncer_b.pull().received:
        raise SystemExit("the second pull on a device that had read everything received some")
    close(store_b, syncer_b)

    before = place.inventory(memories)
    compactor = place.open(device_a)  # `cairn sync compact` on A: a new process, a cold cache
    join(compactor, PASSPHRASE, kdf=KDF)
    with Phase(calls, moto) as compact:
        report = compactor.compact()
    after = place.inventory(memories)
    if report["kept_batches"]:
        raise SystemExit(f"compaction kept {report['kept_batches']} batches every device read")

    store_c, syncer_c, pull_compacted = pull_fresh(
        place, tmp / f"c-{label}.db", embedder, calls, moto
    )
    check_compacted = verify(store_a, store_c)
    close(store_c, syncer_c)
    close(store_a, syncer_a)
    for leftover in tmp.glob(f"*-{label}*"):
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
    if moto is not None:
        moto.reset()

    return {
        "remote": kind,
        "batch_size": batch,
        "run": run,
        "memories": memories,
        "push": {
            **push.result,
            "per_s": round(pushed.pushed / push.result["seconds"], 1),
            "report": asdict(pushed),
            "payload_bytes_per_memory": round(pushed.bytes / memories, 1),
        },
        "stored": stored,
        "pull": {**pull, "check": check},
        "compact": {**compact.result, "report": report, "before": before, "after": after},
        "pull_compacted": {**pull_compacted, "check": check_compacted},
    }


def pull_fresh(
    place: Place,
    path: Path,
    embedder: OnnxEmbedder,
    calls: ObstoreCalls,
    moto: MotoServer | None,
) -> tuple[Store, Syncer, dict[str, Any]]:
    """A new device (empty store, same passphrase) pulls everything; its store, its Syncer and
    the numbers."""
    store = open_store(path, embedder)
    device = store.device_id()
    remote = place.open(device)
    keys = join(remote, PASSPHRASE, kdf=KDF)[0]
    remote.register_device(device, path.stem)
    syncer = Syncer(store, remote, keys)
    embedded = embedder.texts_embedded
    with Phase(calls, moto) as phase:
        pulled = syncer.pull()
    if pulled.failed or pulled.embedded or embedder.texts_embedded != embedded:
        raise SystemExit(f"the pull failed or embedded: {pulled}")
    return (
        store,
        syncer,
        {
            **phase.result,
            "per_s": round(pulled.applied / phase.result["seconds"], 1),
            "report": asdict(pulled),
        },
    )


def verify(a: Store, b: Store) -> dict[str, Any]:
    """B holds every live memory of A, with the same content, and a vector for each."""
    query = "SELECT id, content_hash FROM memories WHERE deleted = 0"
    with a.db.read() as conn:
        on_a = set(conn.execute(query).fetchall())
    with b.db.read() as conn:
        on_b = set(conn.execute(query).fetchall())
        vectors = conn.execute("SELECT count(*) FROM memory_vectors").fetchone()[0]
    if on_a != on_b or vectors != len(on_a):
        raise SystemExit(
            f"B holds {len(on_b)} memories ({len(on_a & on_b)} as on A) and {vectors} vectors; "
            f"A holds {len(on_a)}"
        )
    return {"live_memories": len(on_b), "vectors": vectors}


def close(store: Store, syncer: Syncer) -> None:
    syncer.close()
    store.close()


# --- the whole benchmark -------------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs of one remote and batch size."""

    def med(*path: str) -> float:
        values = []
        for run in runs:
            value: Any = run
            for key in path:
                value = value[key]
            values.append(float(value))
        return round(statistics.median(values), 3)

    phases = {
        phase: {
            "seconds": med(phase, "seconds"),
            "client_cpu_s": med(phase, "client_cpu_s"),
            "server_cpu_s": med(phase, "server_cpu_s"),
            "calls": {name: int(med(phase, "calls", name)) for name in ObstoreCalls.NAMES},
        }
        for phase in PHASES
    }
    return {
        "remote": runs[0]["remote"],
        "batch_size": runs[0]["batch_size"],
        "memories": runs[0]["memories"],
        "runs": len(runs),
        "push_per_s": med("push", "per_s"),
        "push_batches": int(med("push", "report", "batches")),
        "objects_after_push": int(med("stored", "objects")),
        "log_objects_after_push": int(med("stored", "by_kind", "log", "objects")),
        "bytes_per_memory_stored": med("stored", "bytes_per_memory"),
        "payload_bytes_per_memory": med("push", "payload_bytes_per_memory"),
        "pull_per_s": med("pull", "per_s"),
        "objects_before_compaction": int(med("compact", "before", "objects")),
        "compact_seconds": med("compact", "seconds"),
        "objects_after_compaction": int(med("compact", "after", "objects")),
        "bytes_per_memory_after_compaction": med("compact", "after", "bytes_per_memory"),
        "pull_compacted_per_s": med("pull_compacted", "per_s"),
        "phases": phases,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memories", type=int, default=10_000, help="corpus size (items)")
    parser.add_argument(
        "--small-batch", type=int, default=20, help="memories per push batch, as autosync sends"
    )
    parser.add_argument("--runs", type=int, default=1, help="runs (medians reported)")
    parser.add_argument(
        "--remotes", nargs="+", choices=list(REMOTE_NAMES), default=list(REMOTE_NAMES)
    )
    parser.add_argument("--quick", action="store_true", help="one 2k run, to check the script")
    args = parser.parse_args()
    if args.quick:
        args.memories, args.runs = 2000, 1
    n = args.memories
    threadpool_limits(limits=1, user_api="blas")  # as the Store does
    # moto's fixed credentials, for open_url's boto3 chain; a profile would take precedence.
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    os.environ.update(S3_ENV)

    cached_store(n)  # built (slowly) before anything is timed, if missing
    embedder = new_embedder()  # the stores need one; a pull must not call it
    calls = ObstoreCalls()
    calls.install()
    done: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp_name:
        tmp = Path(tmp_name)
        s3 = MotoServer(tmp / "moto.log") if "s3" in args.remotes else nullcontext(None)
        with s3 as moto:
            for run in range(args.runs):
                # Alternate which remote goes first, so a drift in the machine hits both alike.
                order = args.remotes if run % 2 == 0 else args.remotes[::-1]
                for kind in order:
                    for batch in (BULK, args.small_batch):
                        log(
                            f"{REMOTE_NAMES[kind]}, {n:,} memories, {batch:,} per push batch, "
                            f"run {run + 1}/{args.runs}"
                        )
                        result = one_run(kind, batch, n, run, embedder, tmp, moto, calls)
                        log(
                            f"  push {result['push']['per_s']:,.0f}/s into "
                            f"{result['stored']['objects']:,} objects, pull "
                            f"{result['pull']['per_s']:,.0f}/s, compact "
                            f"{result['compact']['seconds']:.2f} s, pull after "
                            f"{result['pull_compacted']['per_s']:,.0f}/s"
                        )
                        done.setdefault((kind, batch), []).append(result)
    results = [
        {**summarize(runs), "all_runs": runs} for runs in done.values()
    ]  # in the first run's order
    report(results, args)


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    n = results[0]["memories"]

    def who(r: dict[str, Any]) -> list[object]:
        return [REMOTE_NAMES[r["remote"]], r["batch_size"]]

    print_table(
        f"Push of {n:,} memories into object storage (medians over {args.runs} run(s))",
        [
            "remote",
            "mem/push batch",
            "push mem/s",
            "objects",
            "log batches",
            "bytes/mem stored",
            "payload bytes/mem",
        ],
        [
            [
                *who(r),
                r["push_per_s"],
                r["objects_after_push"],
                r["log_objects_after_push"],
                r["bytes_per_memory_stored"],
                r["payload_bytes_per_memory"],
            ]
            for r in results
        ],
    )
    print_table(
        "A new device pulls everything, before and after compaction",
        [
            "remote",
            "mem/push batch",
            "pull mem/s",
            "objects before",
            "compact s",
            "objects after",
            "bytes/mem after",
            "pull mem/s after",
        ],
        [
            [
                *who(r),
                r["pull_per_s"],
                r["objects_before_compaction"],
                r["compact_seconds"],
                r["objects_after_compaction"],
                r["bytes_per_memory_after_compaction"],
                r["pull_compacted_per_s"],
            ]
            for r in results
        ],
    )
    print_table(
        "Where the seconds went (medians; S3 server: moto in a subprocess on the same cores)",
        ["remote", "mem/push batch", "phase", "s", "client CPU s", "server CPU s", "obstore calls"],
        [
            [
                *who(r),
                label,
                p["seconds"],
                p["client_cpu_s"],
                p["server_cpu_s"] if r["remote"] == "s3" else "",
                ", ".join(f"{c} {name}" for name, c in p["calls"].items() if c),
            ]
            for r in results
            for phase, label in PHASES.items()
            for p in [r["phases"][phase]]
        ],
    )
    notes = [
        "every device joins with the end-to-end keys (fast KDF) and registers, as setup does",
        f"bulk: Syncer's defaults ({BULK:,} memories or 6 MiB per object); small: "
        f"{args.small_batch} memories per push batch, one object each",
        "objects and bytes: everything in the bucket or folder (header, keyring, device "
        "records, batches, snapshots), listed after the phase; bytes/mem divides by N",
        "payload bytes/mem: the sealed payloads the push sent, before framing and compression",
        "compact: run from a new remote object (a cold cache, as `cairn sync compact` is) after "
        "the first new device published that it has read everything",
        "obstore calls: get, put, list (a listing; S3 pages it by 1,000 keys), "
        "list_with_delimiter, delete (up to 500 objects a call)",
        f"moto and this client share the machine's {os.cpu_count()} cores; moto is not S3: "
        "its latency and CPU per request are a local Python server's",
    ]
    print("\n" + "\n".join(f"- {note}" for note in notes))
    write_results(
        "bench_objects",
        vars(args),
        {
            "notes": notes,
            "uncommitted_src": uncommitted_src(),
            "results": results,
            "peak_rss_mib": peak_rss_mib(),
        },
    )


if __name__ == "__main__":
    main()
