"""Ephemeral devices: from nothing to the first recall answered, as a CI job meets it.

A sync server (``cairn server run``, an end-to-end workspace) holds N memories pushed from a
copy of the cached N-memory store. Then, as a CI job would, ``cairn sync ephemeral URL --
cairn recall QUERY`` runs from an empty machine state: it derives the workspace key from the
passphrase, joins a fresh temporary store, pulls every memory, runs the recall (loading the
model), pushes, removes its device and deletes the store. Timed from spawning it: until it said
it had joined and pulled, until the recall's answer was printed, and until it exited. Target:
10k memories to the first recall in under 5 s here.

    .venv/bin/python bench/bench_ephemeral.py [--sizes 10000 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cairn.remotes.http import HttpRemote
from cairn.sync.engine import Syncer
from cairn.sync.keys import join
from common import (
    CACHE,
    CAIRN,
    Server,
    cached_store,
    log,
    new_embedder,
    open_store,
    print_table,
    write_results,
)

PASSPHRASE = "a benchmark passphrase"
QUERY = "why did we pick httpx for the billing service"
TARGET_S = 5.0


def filled_server(n: int, tmp: Path) -> Server:
    """A started server whose workspace holds the cached N-memory store, pushed by a device."""
    server = Server(tmp / f"server-{n}").__enter__()
    path = tmp / f"a-{n}.db"
    shutil.copyfile(cached_store(n), path)
    store = open_store(path, new_embedder())
    remote = HttpRemote(server.url, server.key, store.device_id())
    syncer = Syncer(store, remote, join(remote, PASSPHRASE)[0])
    pushed = syncer.push()
    syncer.close()
    store.close()
    if pushed.dead_lettered:
        raise SystemExit(f"the push refused {pushed.dead_lettered} memories")
    return server


def one_job(server: Server, tmp: Path) -> dict[str, float]:
    """One `cairn sync ephemeral` run, with the moments it reached each step."""
    env = {
        **os.environ,
        "CAIRN_API_KEY": server.key,
        "CAIRN_PASSPHRASE": PASSPHRASE,
        "TMPDIR": str(tmp),
        "PATH": f"{CAIRN.parent}:{os.environ.get('PATH', '')}",
    }
    env.pop("CAIRN_HOME", None)
    env.pop("CAIRN_DB", None)
    seen: dict[str, float] = {}
    start = time.perf_counter()
    job = subprocess.Popen(
        [str(CAIRN), "sync", "ephemeral", server.url, "--name", "bench"]
        + ["--", str(CAIRN), "recall", QUERY, "-n", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def watch(stream: Any, marks: dict[str, str]) -> None:
        for line in stream:
            for mark, prefix in marks.items():
                if mark not in seen and line.startswith(prefix):
                    seen[mark] = time.perf_counter() - start

    readers = [
        threading.Thread(target=watch, args=(job.stdout, {"recalled": "1. "})),
        threading.Thread(target=watch, args=(job.stderr, {"joined": "joined as"})),
    ]
    for reader in readers:
        reader.start()
    code = job.wait(timeout=600)
    for reader in readers:
        reader.join()
    if code != 0 or set(seen) != {"joined", "recalled"}:
        raise SystemExit(f"cairn sync ephemeral exited {code}, saw {sorted(seen)}")
    return {**seen, "total": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory(dir=CACHE) as name:
            tmp = Path(name)
            log(f"{n:,} memories: filling the server")
            server = filled_server(n, tmp)
            try:
                runs = []
                for run in range(args.runs):
                    log(f"{n:,} memories: ephemeral job {run + 1}/{args.runs}")
                    runs.append(one_job(server, tmp))
            finally:
                server.stop()
        median = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
        results[str(n)] = {"runs": runs, "median_s": median}
        rows.append(
            [
                f"{n:,}",
                median["joined"],
                median["recalled"],
                median["total"],
                "yes" if n != 10_000 or median["recalled"] < TARGET_S else "no",
            ]
        )
    print_table(
        f"Ephemeral device, spawn to each step (median of {args.runs}; seconds)",
        ["memories", "joined and pulled", "first recall answered", "exited", "10k < 5 s"],
        rows,
    )
    write_results("bench_ephemeral", vars(args), results)


if __name__ == "__main__":
    main()
