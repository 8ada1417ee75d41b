"""Hosted fold: how fast a server folds a hosted workspace's log into its search index, on each
server storage (embedded SQLite, PostgreSQL), in-process and without HTTP.

The cached benchmark store's memories (with their vectors, as a device pushes them) are pushed
into a fresh hosted workspace first (not timed); then one fold of the whole log is timed, as a
server does it after the pushes (``cairn.server.hosted_index``). ``bench_hosted.py`` measures
the same end to end, pushes included.

    .venv/bin/python bench/bench_hosted_fold.py                 # 100k, both backends
    .venv/bin/python bench/bench_hosted_fold.py --size 10000    # a tenth
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench_hosted import BATCH, device_mutations
from cairn.protocol import WireMutation
from cairn.server.hosted import Hosted
from cairn.server.storage import ServerStorage
from cairn.server.storage.postgres import PostgresStorage
from cairn.server.storage.sqlite import SqliteStorage
from common import cached_store, embedded_postgres, log, print_table, write_results

NOW = 1_700_000_000_000


def fold_run(backend: str, storage: ServerStorage, wire: list[WireMutation]) -> dict[str, Any]:
    storage.create_workspace("bench", "bench", NOW, mode="hosted")
    for first in range(0, len(wire), BATCH):
        storage.push("bench", wire[first : first + BATCH], "bench-device", NOW)
    hosted = Hosted(storage)
    hosted.embedder  # noqa: B018  (the model loads before the clock starts)
    start = time.perf_counter()
    position = hosted.fold("bench")
    seconds = time.perf_counter() - start
    hosted.close()
    log(f"{backend}: folded {len(wire):,} in {seconds:.1f} s")
    assert position == len(wire), (position, len(wire))
    return {"backend": backend, "fold_s": round(seconds, 1), "per_s": round(len(wire) / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000, help="memories in the workspace")
    parser.add_argument(
        "--backend", choices=["sqlite", "postgres", "both"], default="both", help="server storage"
    )
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    args = parser.parse_args()
    # The first ``size`` memories of a cached store (10k or 100k): nothing is built here.
    wire = device_mutations(cached_store(10_000 if args.size <= 10_000 else 100_000))[: args.size]
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    runs = []
    with tempfile.TemporaryDirectory(prefix="cairn-bench-fold-") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        for backend in backends:
            storage: ServerStorage
            if backend == "postgres":
                new_database = stack.enter_context(embedded_postgres(folder))
                storage = PostgresStorage(new_database())
            else:
                storage = SqliteStorage(folder / "server.db")
            try:
                runs.append(fold_run(backend, storage, wire))
            finally:
                storage.close()
    print_table(
        f"Hosted fold, {len(wire):,} memories",
        ["storage", "fold", "memories/s"],
        [[r["backend"], f"{r['fold_s']} s", f"{r['per_s']:,}"] for r in runs],
    )
    write_results(
        "bench_hosted_fold", {"size": args.size, "backend": args.backend}, {"runs": runs}, args.json
    )


if __name__ == "__main__":
    main()
