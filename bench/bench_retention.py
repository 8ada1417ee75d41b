"""Retention: what a workspace's log holds per memory before and after a compaction, after edits.

Two devices (real stores, real sealed payloads, the real sync engine) share an end-to-end
workspace through the sync server's storage, in-process (no HTTP; each pull records the
device's read position as the server's pull route does). The laptop remembers M memories; then
R rounds: the laptop edits each memory with probability 0.5, the desktop with probability 0.1,
and both sync. The log's mutations and payload bytes (and, on SQLite, the database file after
VACUUM) are counted, the log compacted (`cairn server workspace compact`, both devices
active), and counted again; then a device new to the workspace pulls the whole log, before and
after, and must end with the laptop's memories.

    .venv/bin/python bench/bench_retention.py [--memories 500] [--rounds 10] [--backend sqlite]
        [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from cairn.crypto.keyring import KdfParams
from cairn.device_store import Store
from cairn.memory_rules import NewMemory
from cairn.protocol import PullPage, PushResult, WireMutation
from cairn.remotes.memory import MemoryRemote
from cairn.server.storage import ServerStorage
from cairn.server.storage.postgres import PostgresStorage
from cairn.server.storage.sqlite import SqliteStorage
from cairn.store.db import Database
from cairn.sync.engine import Syncer
from cairn.sync.keys import join
from common import embedded_postgres, log, new_embedder, print_table, write_results

WORKSPACE = "bench"
FAST_KDF = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)  # the keyring is not measured


class ServerLog(MemoryRemote):
    """The server's storage as the log (the keyring stays in memory), as one device reaches it."""

    def __init__(self, storage: ServerStorage, device: str = "") -> None:
        super().__init__()
        self.storage = storage
        self.device = device
        self.pulled_bytes = 0

    def as_device(self, device: str) -> ServerLog:
        other = ServerLog(self.storage, device)
        other._keyrings = self._keyrings  # one workspace: one keyring
        return other

    def push(self, mutations: Sequence[WireMutation]) -> PushResult:
        return self.storage.push(WORKSPACE, mutations, self.device, now())

    def pull(
        self,
        cursor: str | None,
        limit: int = 1000,
        scopes: Sequence[str] | None = None,
        wait: float = 0.0,
    ) -> PullPage:
        since = int(cursor or 0)
        self.storage.record_seen([], [(WORKSPACE, self.device, now(), since)])
        page = self.storage.pull(WORKSPACE, since, limit, scopes)
        self.pulled_bytes += sum(len(m.payload) for m in page.mutations)
        return page


def now() -> int:
    return int(time.time() * 1000)


def counted(storage: ServerStorage, db_file: Path | None) -> dict[str, Any]:
    stats = storage.stats(WORKSPACE)
    held = storage.usage(WORKSPACE, 1, now()).stored_bytes
    counts: dict[str, Any] = {"mutations": stats.mutations, "payload_bytes": held}
    if db_file is not None:
        with sqlite3.connect(db_file) as raw:
            raw.execute("VACUUM")  # written to the WAL, then into the file
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        counts["file_bytes"] = db_file.stat().st_size
    return counts


def newcomer(folder: Path, name: str, embedder: Any, remote: ServerLog) -> tuple[Store, int, float]:
    """A device new to the workspace pulls the whole log: its store, bytes read, seconds."""
    store = Store(Database(folder / f"{name}.db"), embedder, project="p", source=name)
    reader = remote.as_device(store.device_id())
    syncer = Syncer(store, reader, join(reader, "bench passphrase", kdf=FAST_KDF)[0])
    start = time.perf_counter()
    syncer.pull()
    seconds = time.perf_counter() - start
    syncer.pull()  # its next pull (a long-poll, in a real device) says it read it all
    return store, reader.pulled_bytes, seconds


def memories_of(store: Store) -> dict[str, tuple[Any, ...]]:
    rows = store.db.conn.execute("SELECT id, content, deleted, ancestors FROM memories")
    return {row[0]: tuple(row[1:]) for row in rows}


def run(
    backend: str, storage: ServerStorage, folder: Path, args: argparse.Namespace
) -> dict[str, Any]:
    rng = random.Random(7)
    embedder = new_embedder()
    storage.create_workspace(WORKSPACE, WORKSPACE, now())
    remote = ServerLog(storage)
    syncers = []
    for name in ("laptop", "desktop"):
        store = Store(Database(folder / f"{backend}-{name}.db"), embedder, project="p", source=name)
        device = remote.as_device(store.device_id())
        syncers.append(Syncer(store, device, join(device, "bench passphrase", kdf=FAST_KDF)[0]))
    laptop, desktop = syncers
    made = laptop.store.remember_many(
        [NewMemory(f"memory {i}: the deploy runbook, step {i}") for i in range(args.memories)]
    )
    ids = [r.memory.id for r in made]
    for syncer in (laptop, desktop):
        syncer.push()
        syncer.pull()
    edits = 0
    for round_ in range(args.rounds):
        for syncer, chance in ((laptop, 0.5), (desktop, 0.1)):
            for memory_id in ids:
                if rng.random() < chance:
                    text = f"memory {memory_id[-6:]}: step edited in round {round_} ({chance})"
                    syncer.store.edit(memory_id, content=text)
                    edits += 1
        for syncer in (laptop, desktop, laptop, desktop):
            syncer.push()
            syncer.pull()
    log(f"{backend}: {args.memories} memories, {edits} edits over {args.rounds} rounds")
    db_file = storage.path if isinstance(storage, SqliteStorage) else None
    before = counted(storage, db_file)
    first, read_before, pull_before = newcomer(folder, f"{backend}-new1", embedder, remote)
    start = time.perf_counter()
    made_compaction = storage.compact(WORKSPACE, now(), 30, by="bench")
    compact_s = time.perf_counter() - start
    after = counted(storage, db_file)
    second, read_after, pull_after = newcomer(folder, f"{backend}-new2", embedder, remote)
    converged = memories_of(first) == memories_of(second) == memories_of(laptop.store)
    for store in (first, second, laptop.store, desktop.store):
        store.close()
    per = args.memories
    return {
        "backend": backend,
        "memories": per,
        "edits": edits,
        "before": {**before, "per_memory": round(before["payload_bytes"] / per)},
        "after": {**after, "per_memory": round(after["payload_bytes"] / per)},
        "removed": made_compaction.removed,
        "readers": made_compaction.readers,
        "compact_s": round(compact_s, 3),
        "new_device": {
            "read_bytes_before": read_before,
            "read_bytes_after": read_after,
            "pull_s_before": round(pull_before, 2),
            "pull_s_after": round(pull_after, 2),
        },
        "converged": converged,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memories", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument("--quick", action="store_true", help="100 memories, 4 rounds")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    args = parser.parse_args()
    if args.quick:
        args.memories, args.rounds = 100, 4
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    runs = []
    with tempfile.TemporaryDirectory(prefix="cairn-bench-retention-") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        for backend in backends:
            storage: ServerStorage
            if backend == "postgres":
                storage = PostgresStorage(stack.enter_context(embedded_postgres(folder))())
            else:
                storage = SqliteStorage(folder / "server.db")
            try:
                runs.append(run(backend, storage, folder, args))
            finally:
                storage.close()
    rows = []
    for r in runs:
        for when in ("before", "after"):
            c = r[when]
            rows.append(
                [
                    r["backend"],
                    when,
                    f"{c['mutations']:,}",
                    f"{c['payload_bytes']:,}",
                    f"{c['per_memory']:,}",
                    f"{c['file_bytes']:,}" if "file_bytes" in c else "-",
                    f"{r['new_device']['read_bytes_' + when]:,}",
                ]
            )
    print_table(
        f"Retention: {runs[0]['memories']:,} memories, {runs[0]['edits']:,} edits",
        [
            "storage",
            "compaction",
            "mutations",
            "payload bytes",
            "per memory",
            "file",
            "new device reads",
        ],
        rows,
    )
    for r in runs:
        log(
            f"{r['backend']}: {r['removed']:,} dropped in {r['compact_s']} s (load "
            f"{r['loadavg']}), {r['readers']} active readers, converged: {r['converged']}"
        )
    write_results("bench_retention", vars(args) | {"json": None}, {"runs": runs}, args.json)
    if not all(r["converged"] for r in runs):
        raise SystemExit("a new device did not end with the laptop's memories")


if __name__ == "__main__":
    main()
