"""Pull pages, JSON vs binary: bytes per memory and CPU to encode (server) and decode (client).

A copy of the cached 10k store pushes its memories, sealed, into an in-memory remote; its first
page of 1,000 mutations is then written and read back in both forms: ``protocol.page_body`` /
``page_from_json`` (JSON, as the server and client did before) and ``binary_pages.pack_page`` /
``unpack_page`` (MessagePack). Reported: bytes per memory of each page and CPU milliseconds per
page (medians of ``--repeat`` runs, process time, so a busy machine skews it less than a clock).

    .venv/bin/python bench/bench_pages.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cairn import binary_pages, protocol
from cairn.remotes.memory import MemoryRemote
from cairn.sync.engine import Syncer
from cairn.sync.keys import join
from common import cached_store, log, new_embedder, open_store, print_table

PAGE = 1000


def cpu_ms(work: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        work()
        times.append((time.process_time() - start) * 1000)
    return round(statistics.median(times), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="runs per figure (medians)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "a.db"
        shutil.copyfile(cached_store(10_000), path)
        store = open_store(path, new_embedder())
        remote = MemoryRemote()
        syncer = Syncer(store, remote, join(remote, "a benchmark passphrase")[0])
        log("pushing the 10k store into an in-memory remote (sealed)")
        syncer.push()
        page = remote.pull(None, limit=PAGE)
        syncer.close()
        store.close()
    found, cursor, more = page.mutations, page.cursor, page.has_more
    as_json = protocol.page_body(found, cursor, more)
    as_binary = binary_pages.pack_page(found, cursor, more)
    assert binary_pages.unpack_page(as_binary) == protocol.page_from_json(json.loads(as_json))
    payload = statistics.mean(len(m.payload) for m in found)
    rows = [
        [
            "JSON",
            round(len(as_json) / len(found), 1),
            cpu_ms(lambda: protocol.page_body(found, cursor, more), args.repeat),
            cpu_ms(lambda: protocol.page_from_json(json.loads(as_json)), args.repeat),
        ],
        [
            "binary",
            round(len(as_binary) / len(found), 1),
            cpu_ms(lambda: binary_pages.pack_page(found, cursor, more), args.repeat),
            cpu_ms(lambda: binary_pages.unpack_page(as_binary), args.repeat),
        ],
    ]
    print_table(
        f"One page of {len(found):,} sealed mutations (payload {payload:,.0f} bytes on average)",
        ["pages", "bytes/memory (body)", "encode ms", "decode and check ms"],
        rows,
    )


if __name__ == "__main__":
    main()
