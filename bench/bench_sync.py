"""Sync throughput: push N memories from device A through a local sync server, pull into device B.

Device A is a fresh copy of the cached N-memory store (real vectors, every memory pending in the
outbox); the server is ``cairn server run`` as a subprocess on 127.0.0.1 (fresh data folder,
rate limiting off); device B is a new, empty store. Reported: memories/s each way, bytes on the
wire per memory (HTTP bodies and headers, counted by httpx event hooks), the model calls during
the pull (must be 0: vectors travel with the memories), and CPU seconds of client and server.

Pages travel in the binary form (``cairn.binary_pages``, MessagePack); ``--json-pages`` adds,
in the same runs, the same end-to-end sync with JSON pages (as clients before it), so the bytes
and rates of both formats are compared on the same machine state.

Encryption on vs off, in the same run: each run syncs once through an end-to-end workspace
(payloads sealed on A, opened on B) and once through a hosted one (payloads sent as they are),
in alternating order; the overhead is 1 - sealed rate / unsealed rate (target <= 10 %).

The ceiling, in the same run: the same rows (memories, tags, vectors, read from A) bulk-inserted
straight into a fresh store's tables in one transaction with executemany (same schema, keyword
index filled by one INSERT ... SELECT); for push, reading those rows out of A. Targets:
pull >= 20k memories/s applied, push >= 10k/s.

    .venv/bin/python bench/bench_sync.py [--sizes 10000 100000] [--runs 3] [--quick]
        [--profile]   (cProfile of the client, py-spy of the server if it can attach)
        [--postgres]  (also through a server on PostgreSQL) [--json-pages] [--json PATH]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

import corpus
from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.remotes.http import HttpRemote
from cairn.store.db import Database
from cairn.sync.engine import Syncer
from cairn.sync.keys import join
from common import (
    CACHE,
    CAIRN,
    ROOT,
    Server,
    cached_store,
    embedded_postgres,
    log,
    new_embedder,
    open_store,
    peak_rss_mib,
    print_table,
    uncommitted_src,
    write_results,
)

PY_SPY = ROOT / ".venv" / "bin" / "py-spy"
PULL_TARGET = 20_000
PUSH_TARGET = 10_000
OVERHEAD_TARGET = 0.10
PASSPHRASE = "a benchmark passphrase"
MODE_NAMES = {"e2e": "end-to-end encrypted", "hosted": "unencrypted (hosted)"}
RECALL_CHECKS = 5

MEMORY_COLUMNS = (
    "rowid, id, content, kind, project, topic_key, source, created_at, updated_at, deleted, "
    "content_hash, model_id, created_hlc, hlc, field_hlc, ancestors, seq"
)


# --- bytes on the wire ---------------------------------------------------------------------------


class Traffic:
    """HTTP bytes one client sent and received, counted by httpx event hooks.

    Bodies are counted exactly (as sent / as received, before any decoding); headers as their
    HTTP/1.1 text (request or status line, ``name: value`` lines, blank line). TCP/IP framing
    is not included.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.body_up = 0
        self.headers_up = 0
        self.body_down = 0
        self.headers_down = 0

    def attach(self, remote: HttpRemote) -> None:
        remote._client.event_hooks = {"request": [self._request], "response": [self._response]}

    def _request(self, request: httpx.Request) -> None:
        self.requests += 1
        self.body_up += len(request.content)
        line = len(request.method) + len(request.url.raw_path) + len(" HTTP/1.1\r\n") + 1
        self.headers_up += line + _header_bytes(request.headers.raw)

    def _response(self, response: httpx.Response) -> None:
        response.read()
        self.body_down += response.num_bytes_downloaded
        line = len(f"HTTP/1.1 {response.status_code} {response.reason_phrase}\r\n")
        self.headers_down += line + _header_bytes(response.headers.raw)

    def to_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "body_up": self.body_up,
            "headers_up": self.headers_up,
            "body_down": self.body_down,
            "headers_down": self.headers_down,
        }


def _header_bytes(raw: list[tuple[bytes, bytes]]) -> int:
    return sum(len(k) + len(v) + 4 for k, v in raw) + 2


# --- the ceiling ---------------------------------------------------------------------------------


def read_rows(path: Path) -> tuple[list[Any], list[Any], list[Any]]:
    """Every memory, tag and vector row of a store, as Python tuples."""
    conn = sqlite3.connect(path)
    try:
        memories = conn.execute(f"SELECT {MEMORY_COLUMNS} FROM memories ORDER BY rowid").fetchall()
        tags = conn.execute("SELECT memory_rowid, tag FROM memory_tags").fetchall()
        vectors = conn.execute(
            "SELECT memory_rowid, model_id, vector FROM memory_vectors"
        ).fetchall()
    finally:
        conn.close()
    return memories, tags, vectors


def bulk_insert(path: Path, rows: tuple[list[Any], list[Any], list[Any]]) -> float:
    """Seconds to insert ``rows`` into a fresh store file in one transaction, keyword index
    included (filled by one INSERT ... SELECT, the fastest way SQLite offers)."""
    memories, tags, vectors = rows
    db = Database(path)  # the real schema, pragmas and triggers
    try:
        marks = ", ".join("?" * len(MEMORY_COLUMNS.split(",")))
        start = time.perf_counter()
        with db.write() as conn:
            conn.executemany(f"INSERT INTO memories({MEMORY_COLUMNS}) VALUES ({marks})", memories)
            conn.executemany("INSERT INTO memory_tags(memory_rowid, tag) VALUES (?, ?)", tags)
            conn.executemany(
                "INSERT INTO memory_vectors(memory_rowid, model_id, vector) VALUES (?, ?, ?)",
                vectors,
            )
            conn.execute(
                "INSERT INTO memories_fts(rowid, content) "
                "SELECT rowid, content FROM memories WHERE deleted = 0"
            )
        seconds = time.perf_counter() - start
        fts = conn.execute("SELECT count(*) FROM memories_fts_docsize").fetchone()[0]
        if fts != sum(1 for m in memories if not m[9]):
            raise SystemExit(f"the ceiling store indexed {fts} rows for {len(memories)} memories")
    finally:
        db.close()
    return seconds


# --- one run -------------------------------------------------------------------------------------


@contextmanager
def profiled(name: str, out: Path | None, server: Server) -> Any:
    """cProfile this process (and py-spy the server, if it can attach) while the block runs."""
    if out is None:
        yield
        return
    spy = None
    if PY_SPY.exists():
        assert server.proc is not None
        spy = subprocess.Popen(
            [str(PY_SPY), "record", "--pid", str(server.proc.pid), "--rate", "200"]
            + ["--format", "raw", "--output", str(out / f"{name}-server.txt"), "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=(out / f"{name}-server.err").open("wb"),
        )
        time.sleep(1.0)  # let it attach
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        profile.dump_stats(out / f"{name}-client.prof")
        if spy is not None:
            spy.send_signal(2)  # SIGINT: py-spy writes what it has and exits
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        stats = pstats.Stats(str(out / f"{name}-client.prof"))
        with (out / f"{name}-client.txt").open("w") as text:
            stats.stream = text  # type: ignore[attr-defined]
            stats.sort_stats("tottime").print_stats(40)
            stats.sort_stats("cumulative").print_stats(60)
        log(f"profiles of the {name} in {out.relative_to(ROOT)}/{name}-*")


def one_run(
    n: int,
    run: int,
    mode: str,
    embedder: OnnxEmbedder,
    tmp: Path,
    profile: Path | None,
    db: str | None = None,
    binary: bool = True,
) -> dict[str, Any]:
    sealed = mode == "e2e"
    a_path = tmp / f"a-{n}-{run}.db"
    shutil.copyfile(cached_store(n), a_path)  # a fresh copy: every memory pending again

    start = time.perf_counter()
    rows = read_rows(a_path)
    read_s = time.perf_counter() - start
    memories = len(rows[0])
    live = sum(1 for m in rows[0] if not m[9])
    ceiling_s = bulk_insert(tmp / f"ceiling-{n}-{run}.db", rows)
    del rows

    with Server(tmp / f"server-{n}-{run}", mode, db) as server:
        store_a = open_store(a_path, embedder)
        remote_a = HttpRemote(server.url, server.key, store_a.device_id(), binary=binary)
        up = Traffic()
        up.attach(remote_a)
        keys = join(remote_a, PASSPHRASE)[0] if sealed else None  # creates the keyring
        start = time.perf_counter()
        syncer_a = Syncer(store_a, remote_a, keys)  # a new target: queues every memory
        setup_s = time.perf_counter() - start
        up.reset()
        cpu, server_cpu = time.process_time(), server.cpu_seconds()
        with profiled(f"push-{n}-{mode}", profile, server):
            start = time.perf_counter()
            pushed = syncer_a.push()
            push_s = time.perf_counter() - start
        push_cpu = time.process_time() - cpu
        push_server_cpu = server.cpu_seconds() - server_cpu
        if pushed.pushed != memories or pushed.dead_lettered:
            raise SystemExit(f"push sent {pushed} for {memories} memories")

        store_b = open_store(tmp / f"b-{n}-{run}.db", embedder)
        remote_b = HttpRemote(server.url, server.key, store_b.device_id(), binary=binary)
        down = Traffic()
        down.attach(remote_b)
        syncer_b = Syncer(store_b, remote_b, join(remote_b, PASSPHRASE)[0] if sealed else None)
        down.reset()
        embedded_before = embedder.texts_embedded
        cpu, server_cpu = time.process_time(), server.cpu_seconds()
        with profiled(f"pull-{n}-{mode}", profile, server):
            start = time.perf_counter()
            pulled = syncer_b.pull()
            pull_s = time.perf_counter() - start
        pull_cpu = time.process_time() - cpu
        pull_server_cpu = server.cpu_seconds() - server_cpu
        embed_calls = embedder.texts_embedded - embedded_before

        check = verify(store_a, store_b, live, n)
        for syncer in (syncer_a, syncer_b):
            syncer.close()
        store_a.close()
        store_b.close()
    for leftover in tmp.glob(f"*-{n}-{run}*"):
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()

    return {
        "run": run,
        "mode": mode,
        "pages": "msgpack" if binary else "json",
        "memories": memories,
        "push": {
            "seconds": round(push_s, 3),
            "per_s": round(pushed.pushed / push_s, 1),
            "setup_seconds": round(setup_s, 3),
            "client_cpu_s": round(push_cpu, 2),
            "server_cpu_s": round(push_server_cpu, 2),
            "report": asdict(pushed),
            "wire": up.to_dict(),
            "bytes_per_memory": round((up.body_up + up.headers_up) / memories, 1),
            "payload_bytes_per_memory": round(pushed.bytes / memories, 1),
        },
        "pull": {
            "seconds": round(pull_s, 3),
            "per_s": round(pulled.applied / pull_s, 1),
            "client_cpu_s": round(pull_cpu, 2),
            "server_cpu_s": round(pull_server_cpu, 2),
            "report": asdict(pulled),
            "wire": down.to_dict(),
            "bytes_per_memory": round((down.body_down + down.headers_down) / memories, 1),
            "embedding_calls": embed_calls,
        },
        "ceiling": {
            "read_seconds": round(read_s, 3),
            "read_per_s": round(memories / read_s, 1),
            "insert_seconds": round(ceiling_s, 3),
            "insert_per_s": round(memories / ceiling_s, 1),
        },
        "pull_to_ceiling": round(ceiling_s / pull_s, 3),
        "push_to_read": round(read_s / push_s, 3),
        "check": check,
    }


def verify(a: Store, b: Store, live: int, n: int) -> dict[str, Any]:
    """B holds every live memory of A with its vector, and recall on B answers like on A."""
    conn = b.db.conn
    count = b.count()
    vectors = conn.execute("SELECT count(*) FROM memory_vectors").fetchone()[0]
    pending = conn.execute("SELECT count(DISTINCT entity_id) FROM outbox").fetchone()[0]
    if count != live or vectors != live:
        raise SystemExit(f"B holds {count} memories and {vectors} vectors; A holds {live}")
    start = time.perf_counter()
    b.recall("warm up the vector index")
    first_recall_ms = (time.perf_counter() - start) * 1000
    same_order = same_set = 0
    for item in corpus.query_sample(n, RECALL_CHECKS):
        got_a = [h.memory.id for h in a.recall(item.query, limit=5)]
        got_b = [h.memory.id for h in b.recall(item.query, limit=5)]
        if not got_b:
            raise SystemExit(f"recall on B found nothing for {item.query!r}")
        # B's rowids differ from A's, so near-ties between rankers may swap places.
        same_order += got_a == got_b
        same_set += set(got_a) == set(got_b)
    return {
        "live_memories_on_b": count,
        "vectors_on_b": vectors,
        "pending_on_b_after_pull": pending,
        "first_recall_on_b_ms": round(first_recall_ms, 1),
        "recall_top5_same_order_as_a": f"{same_order}/{RECALL_CHECKS}",
        "recall_top5_same_set_as_a": f"{same_set}/{RECALL_CHECKS}",
    }


# --- the whole benchmark -------------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs of the rates (and of their ratios)."""

    def med(*path: str) -> float:
        values = []
        for run in runs:
            value: Any = run
            for key in path:
                value = value[key]
            values.append(float(value))
        return round(statistics.median(values), 3)

    return {
        "runs": len(runs),
        "push_per_s": med("push", "per_s"),
        "pull_per_s": med("pull", "per_s"),
        "ceiling_insert_per_s": med("ceiling", "insert_per_s"),
        "ceiling_read_per_s": med("ceiling", "read_per_s"),
        "pull_to_ceiling": med("pull_to_ceiling"),
        "push_to_read": med("push_to_read"),
        "bytes_up_per_memory": med("push", "bytes_per_memory"),
        "bytes_down_per_memory": med("pull", "bytes_per_memory"),
        "embedding_calls_on_pull": max(r["pull"]["embedding_calls"] for r in runs),
        "push_client_cpu_s": med("push", "client_cpu_s"),
        "push_server_cpu_s": med("push", "server_cpu_s"),
        "push_seconds": med("push", "seconds"),
        "pull_client_cpu_s": med("pull", "client_cpu_s"),
        "pull_server_cpu_s": med("pull", "server_cpu_s"),
        "pull_seconds": med("pull", "seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 100_000], help="corpus sizes (items)"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per size (medians reported)")
    parser.add_argument("--quick", action="store_true", help="one 2k run, to check the script")
    parser.add_argument(
        "--profile", action="store_true", help="profile push and pull (bench/.cache/profile-sync)"
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="also sync each run through a server on PostgreSQL (embedded-postgres), e2e",
    )
    parser.add_argument(
        "--json-pages",
        action="store_true",
        help="also sync each run e2e with JSON pages (the format before the binary one)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="where the results go (bench/results/...)"
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.runs = [2000], 1
    if not CAIRN.exists():
        raise SystemExit(f"{CAIRN} is missing; install Cairn (make install) first")

    profile = CACHE / "profile-sync" if args.profile else None
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    embedder = new_embedder()  # loaded now: B's recall check needs it; the pull must not
    results = []
    for n in args.sizes:
        cached_store(n)  # built (slowly) before anything is timed, if missing
        runs = args.runs
        done: dict[str, list[dict[str, Any]]] = {
            "e2e": [],
            "hosted": [],
            "postgres": [],
            "json_pages": [],
        }
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp_name:
            postgres = embedded_postgres(Path(tmp_name)) if args.postgres else nullcontext(None)
            with postgres as new_database:
                for run in range(runs):
                    # Alternate which goes first, so a drift in the machine hits all alike.
                    kinds = ["e2e", "hosted"] + (["postgres"] if new_database else [])
                    kinds += ["json_pages"] if args.json_pages else []
                    for kind in kinds if run % 2 == 0 else kinds[::-1]:
                        mode = "hosted" if kind == "hosted" else "e2e"
                        db = new_database() if kind == "postgres" and new_database else None
                        label = "PostgreSQL server, e2e" if db else MODE_NAMES[mode]
                        binary = kind != "json_pages"
                        label += "" if binary else ", JSON pages"
                        log(f"sync of the {n:,}-item store, {label}, run {run + 1}/{runs}")
                        result = one_run(
                            n, run, mode, embedder, Path(tmp_name), profile, db, binary
                        )
                        log(
                            f"  push {result['push']['per_s']:,.0f}/s, pull "
                            f"{result['pull']['per_s']:,.0f}/s, ceiling "
                            f"{result['ceiling']['insert_per_s']:,.0f} rows/s"
                        )
                        done[kind].append(result)
        sealed, plain = summarize(done["e2e"]), summarize(done["hosted"])
        results.append(
            {
                "items": n,
                **sealed,
                "unencrypted": plain,
                "encryption_overhead": {
                    "push": round(1 - sealed["push_per_s"] / plain["push_per_s"], 3),
                    "pull": round(1 - sealed["pull_per_s"] / plain["pull_per_s"], 3),
                },
                "all_runs": done["e2e"],
                "all_unencrypted_runs": done["hosted"],
                **(
                    {"postgres": summarize(done["postgres"]), "all_postgres_runs": done["postgres"]}
                    if done["postgres"]
                    else {}
                ),
                **(
                    {
                        "json_pages": summarize(done["json_pages"]),
                        "all_json_pages_runs": done["json_pages"],
                    }
                    if done["json_pages"]
                    else {}
                ),
            }
        )

    print_table(
        "Sync through a local `cairn server run` (medians over runs)",
        [
            "N (memories)",
            "runs",
            "push mem/s",
            "pull mem/s",
            "ceiling rows/s",
            "pull/ceiling",
            "push/read",
            "bytes/mem up",
            "bytes/mem down",
            "embed calls on pull",
        ],
        [
            [
                r["all_runs"][0]["memories"],
                r["runs"],
                r["push_per_s"],
                r["pull_per_s"],
                r["ceiling_insert_per_s"],
                r["pull_to_ceiling"],
                r["push_to_read"],
                r["bytes_up_per_memory"],
                r["bytes_down_per_memory"],
                int(r["embedding_calls_on_pull"]),
            ]
            for r in results
        ],
    )
    print_table(
        f"Encryption on vs off in the same runs (target overhead <= {OVERHEAD_TARGET:.0%})",
        [
            "N",
            "push sealed/s",
            "push plain/s",
            "push overhead",
            "pull sealed/s",
            "pull plain/s",
            "pull overhead",
            "bytes/mem up sealed",
            "bytes/mem up plain",
        ],
        [
            [
                r["items"],
                r["push_per_s"],
                r["unencrypted"]["push_per_s"],
                f"{r['encryption_overhead']['push']:.1%}",
                r["pull_per_s"],
                r["unencrypted"]["pull_per_s"],
                f"{r['encryption_overhead']['pull']:.1%}",
                r["bytes_up_per_memory"],
                r["unencrypted"]["bytes_up_per_memory"],
            ]
            for r in results
        ],
    )
    print_table(
        "Where the seconds went (medians; client and server share the machine's cores)",
        [
            "N",
            "push s",
            "push client CPU s",
            "push server CPU s",
            "pull s",
            "pull client CPU s",
            "pull server CPU s",
        ],
        [
            [
                r["all_runs"][0]["memories"],
                r["push_seconds"],
                r["push_client_cpu_s"],
                r["push_server_cpu_s"],
                r["pull_seconds"],
                r["pull_client_cpu_s"],
                r["pull_server_cpu_s"],
            ]
            for r in results
        ],
    )
    compared = [r for r in results if "postgres" in r]
    if compared:
        print_table(
            "The same e2e sync through a server on PostgreSQL vs on embedded SQLite",
            [
                "N",
                "push SQLite/s",
                "push PostgreSQL/s",
                "pull SQLite/s",
                "pull PostgreSQL/s",
                "push server CPU s SQLite / PG",
                "pull server CPU s SQLite / PG",
            ],
            [
                [
                    r["items"],
                    r["push_per_s"],
                    r["postgres"]["push_per_s"],
                    r["pull_per_s"],
                    r["postgres"]["pull_per_s"],
                    f"{r['push_server_cpu_s']} / {r['postgres']['push_server_cpu_s']}",
                    f"{r['pull_server_cpu_s']} / {r['postgres']['pull_server_cpu_s']}",
                ]
                for r in compared
            ],
        )
    formats = [r for r in results if "json_pages" in r]
    if formats:
        print_table(
            "The same e2e sync with binary (MessagePack) pages vs JSON pages",
            [
                "N",
                "push binary/s",
                "push JSON/s",
                "pull binary/s",
                "pull JSON/s",
                "bytes/mem up binary / JSON",
                "bytes/mem down binary / JSON",
                "fewer bytes down",
            ],
            [
                [
                    r["items"],
                    r["push_per_s"],
                    r["json_pages"]["push_per_s"],
                    r["pull_per_s"],
                    r["json_pages"]["pull_per_s"],
                    f"{r['bytes_up_per_memory']} / {r['json_pages']['bytes_up_per_memory']}",
                    f"{r['bytes_down_per_memory']} / {r['json_pages']['bytes_down_per_memory']}",
                    f"{1 - r['bytes_down_per_memory'] / json_down:.1%}",
                ]
                for r in formats
                for json_down in [r["json_pages"]["bytes_down_per_memory"]]
            ],
        )
    notes = [
        f"targets: pull >= {PULL_TARGET:,} memories/s applied, push >= {PUSH_TARGET:,}/s "
        "(end-to-end encrypted, as a device syncs by default)",
        "unencrypted: the same sync through a hosted workspace, whose payloads are not sealed",
        "ceiling: the same rows inserted with executemany in one transaction (keyword index "
        "included); push/read compares push with reading those rows out of A",
        "bytes per memory: HTTP bodies plus headers, per memory pushed or pulled",
        f"the server subprocess and this client share the machine's {os.cpu_count()} cores",
    ]
    print("\n" + "\n".join(f"- {note}" for note in notes))
    missed = [
        f"N={r['items']:,}: "
        + ", ".join(
            what
            for what, bad in (
                ("pull below target", r["pull_per_s"] < PULL_TARGET),
                ("push below target", r["push_per_s"] < PUSH_TARGET),
                ("embedding calls on pull", r["embedding_calls_on_pull"] > 0),
                ("encryption overhead", max(r["encryption_overhead"].values()) > OVERHEAD_TARGET),
            )
            if bad
        )
        for r in results
        if r["pull_per_s"] < PULL_TARGET
        or r["push_per_s"] < PUSH_TARGET
        or r["embedding_calls_on_pull"]
        or max(r["encryption_overhead"].values()) > OVERHEAD_TARGET
    ]
    if missed:
        print("- missed: " + "; ".join(missed))
    write_results(
        "bench_sync",
        {k: v for k, v in vars(args).items() if k != "json"},
        {
            "notes": notes,
            "uncommitted_src": uncommitted_src(),
            "results": results,
            "peak_rss_mib": peak_rss_mib(),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
