"""Autosync: how soon a memory remembered on one device is recallable on another, with no sync
command, and what the background worker costs the agent's own calls.

Two devices (fresh stores sharing the real embedder) each run the sync worker against
``cairn server run`` on 127.0.0.1 (a subprocess, end-to-end encrypted workspace). Device A
remembers one memory at a time (from the benchmark corpus); the clock runs from the start of
``remember`` until device B finds the memory by id (polled every 5 ms); the next one starts
then. Each debounce is measured in its own run: 1 s is the default (a burst of writes goes in
one push), 0.2 s shows the floor (push + the other device's long-poll waking + its apply).

Also reported: ``remember`` and ``recall`` latency on A, 0.25 s apart, while its worker runs
(and pushes each new memory) vs on a store with no worker: the agent must never wait on the
network. B is stopped by then, so only A's own sync shares the process.

    .venv/bin/python bench/bench_autosync.py [--memories 30] [--debounce 1.0 0.2] [--quick]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import corpus
from cairn.crypto.keyring import KdfParams
from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.errors import NotFound
from cairn.remotes.http import HttpRemote
from cairn.sync.backoff import Backoff
from cairn.sync.engine import Syncer
from cairn.sync.keys import join
from cairn.sync.worker import Worker
from common import (
    Server,
    log,
    new_embedder,
    open_store,
    print_table,
    stats_ms,
    write_results,
)

PASSPHRASE = "bench passphrase"
KDF = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)  # setup cost only, not measured


def device(path: Path, embedder: OnnxEmbedder, server: Server, debounce: float) -> Worker:
    store = open_store(path, embedder)
    remote = HttpRemote(server.url, server.key, store.device_id())
    keys = join(remote, PASSPHRASE, kdf=KDF)[0]
    remote.close()

    def connect() -> Syncer:
        return Syncer(store, HttpRemote(server.url, server.key, store.device_id()), keys)

    return Worker(store, connect, debounce=debounce, backoff=Backoff(rng=random.Random(1)))


def found(store: Store, memory_id: str) -> bool:
    try:
        store.get(memory_id)
    except NotFound:
        return False
    return True


def delivery(
    items: list[corpus.Item],
    calls: list[corpus.Item],
    embedder: OnnxEmbedder,
    debounce: float,
    tmp: Path,
) -> dict[str, Any]:
    """Delivery A -> B; then, with B gone, the agent's calls on A while A's worker runs (and
    pushes what they wrote)."""
    with Server(tmp / f"server-{debounce}") as server:
        a = device(tmp / f"a-{debounce}.db", embedder, server, debounce).start()
        b = device(tmp / f"b-{debounce}.db", embedder, server, debounce).start()
        try:
            time.sleep(2.0)  # both connected, B's long-poll open
            latencies = []
            for item in items:
                start = time.perf_counter()
                memory = a.store.remember(item.content, item.kind, item.project).memory
                while not found(b.store, memory.id):
                    time.sleep(0.005)
                latencies.append(time.perf_counter() - start)
            b.stop()
            timings = agent_calls(a.store, calls)
        finally:
            a.stop()
            b.stop()
            a.store.close()
            b.store.close()
    return {"debounce_s": debounce, "delivery_ms": stats_ms(latencies), **timings}


def agent_calls(store: Store, items: list[corpus.Item]) -> dict[str, Any]:
    """remember then recall for each item, 0.25 s apart (an agent's pace: pushes interleave)."""
    remembers, recalls = [], []
    for item in items:
        start = time.perf_counter()
        store.remember(item.content, item.kind, item.project)
        remembers.append(time.perf_counter() - start)
        begin = time.perf_counter()
        store.recall(item.query, limit=10)
        recalls.append(time.perf_counter() - begin)
        time.sleep(0.25)
    return {"remember_ms": stats_ms(remembers), "recall_ms": stats_ms(recalls)}


def without_worker(items: list[corpus.Item], embedder: OnnxEmbedder, tmp: Path) -> dict[str, Any]:
    store = open_store(tmp / "alone.db", embedder)
    try:
        return agent_calls(store, items)
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memories", type=int, default=30)
    parser.add_argument("--debounce", type=float, nargs="+", default=[1.0, 0.2])
    parser.add_argument("--quick", action="store_true", help="5 memories (checks the script)")
    args = parser.parse_args()
    count = 5 if args.quick else args.memories
    items = corpus.items(2 * count)
    embedder = new_embedder()
    runs = []
    with tempfile.TemporaryDirectory(prefix="cairn-bench-autosync-") as folder:
        tmp = Path(folder)
        for debounce in args.debounce:
            log(f"delivery with a {debounce} s debounce, {count} memories")
            runs.append(delivery(items[:count], items[count:], embedder, debounce, tmp))
        alone = without_worker(items[count:], embedder, tmp)
    rows = [
        [
            f"{r['debounce_s']} s",
            r["delivery_ms"]["p50_ms"],
            r["delivery_ms"]["p95_ms"],
            r["delivery_ms"]["max_ms"],
            r["remember_ms"]["p50_ms"],
            r["recall_ms"]["p50_ms"],
        ]
        for r in runs
    ]
    alone_row = [alone["remember_ms"]["p50_ms"], alone["recall_ms"]["p50_ms"]]
    rows.append(["no worker", "", "", "", *alone_row])
    print_table(
        f"Autosync: A remembers, B has it ({count} deliveries, {count} agent calls, ms)",
        ["debounce", "delivery p50", "p95", "max", "remember p50", "recall p50"],
        rows,
    )
    path = write_results(
        "bench_autosync",
        vars(args),
        {"runs": runs, "without_worker": alone, "memories": count},
    )
    log(f"results in {path}")


if __name__ == "__main__":
    main()
