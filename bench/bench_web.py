"""Web pages at 100k memories: server time to render each page of the web UIs (goal: 150 ms).

Each suite is one app over a big store: ``local`` is the memory browser of ``cairn serve``
over a copy of the cached 100k store (or, with ``--near-copies 10000``, of a store made of the
cached 10k store's memories and near copies of them, as bench_million.py makes its 1M: quick to
build when the 100k store is not cached). A page is fetched ``--repeat`` times in process
(Starlette's test client: the app's whole handling, HTML included, without a network or a
browser) after one warm-up fetch; the table has p50, p95 and max per page, and the median CPU
time of the process per fetch (it does not count waiting for other processes, so it reads truer
than the clock on a busy machine); the JSON (``bench/results/bench_web.json``) has every figure
by suite and page. ``console-sqlite`` and ``console-postgres`` are the sync server's admin
console over a hosted workspace of the same memories (``web_console``). A suite is a name and a
context manager that yields a client and its pages.

    .venv/bin/python bench/bench_web.py [--size 100000] [--repeat 15] [--suite local]
        [--near-copies 10000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

import web_console
from bench_million import build, million_path
from cairn import config
from cairn.api import create_app
from cairn.wiring import SyncControl
from common import (
    cached_store,
    log,
    new_embedder,
    open_store,
    print_table,
    stats_ms,
    store_path,
    write_results,
)

GOAL_MS = 150.0
PAGE_DEEP = 50_000
"""The offset of a page deep in the list (page 2,000 of 25)."""
Pages = list[tuple[str, str]]
"""(label, path) of each page a suite fetches."""


@dataclass(frozen=True)
class Suite:
    name: str
    open: Callable[[Path], contextlib.AbstractContextManager[tuple[TestClient, Pages]]]
    """Given a big store (not to be changed), yields a client of the app and its pages."""


def wait_for_store(n: int) -> Path:
    """The cached n-memory store; when another process is building it, wait (building it here
    would delete theirs)."""
    path = store_path(n)
    building = path.with_name(path.stem + ".building.db")
    while not path.exists() and building.exists():
        log(f"another process is building {path.name}; waiting")
        time.sleep(30)
    return cached_store(n)


@contextlib.contextmanager
def local_browser(source: Path) -> Iterator[tuple[TestClient, Pages]]:
    """The memory browser of `cairn serve` over a copy of ``source``, sync not set up."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cairn.db"
        log(f"copying {source.name}")
        shutil.copyfile(source, path)
        vectors = source.with_name(source.name + ".vectors")
        if vectors.is_dir():  # the saved vector index, so the copy does not build it again
            shutil.copytree(vectors, path.with_name(path.name + ".vectors"))
        store = open_store(path, new_embedder())
        store.warm_up()
        settings = config.load({"CAIRN_HOME": folder, "CAIRN_DB": str(path)}, source="http")
        sync = SyncControl(settings, store, autosync=False)
        try:
            first = store.list(limit=1)[0]
            project = next(iter(store.projects()))
            pages = [
                ("memories", "/"),
                ("memories, page 2,000", f"/?offset={PAGE_DEEP}"),
                ("memories of a project", f"/?project={project}"),
                ("memories of a kind, a tag", "/?kind=decision&tag=fraud"),
                ("search", "/?q=how+do+we+deploy+the+api"),
                ("memory", f"/memories/{first.id}"),
                ("timeline, 30 days by kind", "/timeline"),
                ("timeline, 365 days by project", "/timeline?days=365&by=project"),
                ("conflicts", "/conflicts"),
                ("sync", "/sync"),
                ("settings", "/settings"),
                ("API docs", "/docs"),
            ]
            with TestClient(create_app(store, sync=sync), base_url="http://127.0.0.1") as client:
                yield client, pages
        finally:
            sync.close()
            store.close()


SUITES = {
    "local": Suite("local", local_browser),
    "console-sqlite": Suite("console-sqlite", web_console.console_sqlite),
    "console-postgres": Suite("console-postgres", web_console.console_postgres),
}


def measure(client: TestClient, path: str, repeat: int) -> dict[str, Any]:
    answer = client.get(path)
    assert answer.status_code == 200, f"{path}: {answer.status_code} {answer.text[:300]}"
    times, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        answer = client.get(path)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        assert answer.status_code == 200
    cpu_p50 = stats_ms(cpu)["p50_ms"]
    return {"path": path, "bytes": len(answer.content), "cpu_p50_ms": cpu_p50, **stats_ms(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000, help="memories in the store")
    parser.add_argument("--repeat", type=int, default=15, help="fetches per page")
    parser.add_argument("--suite", choices=sorted(SUITES), action="append", help="default: all")
    parser.add_argument(
        "--near-copies",
        type=int,
        metavar="SOURCE",
        help="use a store of the cached SOURCE store's memories and near copies of them",
    )
    args = parser.parse_args()
    if args.near_copies:
        meta = build(args.near_copies, args.size, profile=False)
        source = million_path(args.near_copies, args.size)
        log(f"near copies: {meta['real']:,} real memories, {meta['synthetic']:,} copies")
    else:
        source = wait_for_store(args.size)
    results: dict[str, Any] = {"goal_ms": GOAL_MS, "store": source.name, "suites": {}}
    rows = []
    for name in args.suite or sorted(SUITES):
        with SUITES[name].open(source) as (client, pages):
            found = {}
            for label, path in pages:
                found[label] = figures = measure(client, path, args.repeat)
                log(f"  {name} {label}: p50 {figures['p50_ms']} ms")
                met = "yes" if figures["p95_ms"] <= GOAL_MS else "no"
                rows.append(
                    [name, label, figures["p50_ms"], figures["p95_ms"], figures["max_ms"]]
                    + [figures["cpu_p50_ms"], met]
                )
        results["suites"][name] = {"pages": found}
    load = [round(x, 2) for x in os.getloadavg()]
    print_table(
        f"Web pages at {args.size:,} memories, server time (load average {load})",
        ["suite", "page", "p50 ms", "p95 ms", "max ms", "CPU p50 ms", f"p95 ≤ {GOAL_MS:.0f} ms"],
        rows,
    )
    write_results("bench_web", vars(args), results)


if __name__ == "__main__":
    main()
