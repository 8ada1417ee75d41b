"""Idle long-polls and wake-ups: what waiting devices cost the database, and how fast news travels.

For each backend (embedded SQLite, PostgreSQL) two `cairn server run` processes on different
ports serve one database (on SQLite, one data folder): two "hosts".

Wake-up: a long-poll waits on the first server (seen waiting in its metrics); a push goes to the
second; the time from the push's start to the long-poll's answer, over ``--trials`` pushes.

Idle: ``--devices`` simulated devices (asyncio connections in this process, real HTTP), split
over both servers, each long-polling (``wait=25``, as the sync worker does) and asking again as
soon as it is answered, for ``--seconds``; nobody pushes. Counted: pull requests/s (from the
servers' metrics) and, on PostgreSQL, the database's transactions/s (``pg_stat_database``,
which includes the servers' own bookkeeping). Each recheck interval runs in turn: 1 s (the
old default), 30 s (the new one).

    .venv/bin/python bench/bench_idle.py [--devices 1000] [--seconds 60] [--trials 20]
        [--backend sqlite|postgres|both] [--recheck 1,30] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import statistics
import tempfile
import threading
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import conninfo

from cairn.protocol import SEALED_HEADER, SEALED_VERSION, WireMutation
from cairn.remotes.http import HttpRemote
from common import Server, embedded_postgres, log, print_table, write_results

LONG_POLL = 25.0  # the sync worker's wait


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def pulls(url: str) -> float:
    return metric(url, 'cairn_http_requests_total{route="/v1/sync/pull"')


def mutation(n: int) -> WireMutation:
    header = SEALED_HEADER.pack(SEALED_VERSION, 1, os.urandom(16), os.urandom(12))
    payload = header + os.urandom(64)  # shaped as a sealed envelope
    return WireMutation(
        f"m-{n}", "dev-a", f"{1_700_000_000_000 + n:013d}-0000-dev-a", "e", None, payload
    )


def wake_ups(reader: str, writer: str, key: str, trials: int) -> tuple[list[float], list[float]]:
    """Seconds from each push to ``writer`` to the answer of a long-poll waiting at ``reader``,
    and each push's own duration (its commit is part of the wake-up)."""
    latencies: list[float] = []
    pushes: list[float] = []
    cursor = HttpRemote(reader, key).pull(None).cursor
    for n in range(trials):
        answer: list[Any] = []
        remote = HttpRemote(reader, key)

        def poll(remote: HttpRemote = remote, since: str = cursor, out: list[Any] = answer) -> None:
            out.append((remote.pull(since, wait=30), time.monotonic()))

        thread = threading.Thread(target=poll)
        thread.start()
        while metric(reader, "cairn_long_polls_waiting") < 1:
            time.sleep(0.01)
        pushing = HttpRemote(writer, key)
        started = time.monotonic()
        pushing.push([mutation(n)])
        pushes.append(time.monotonic() - started)
        thread.join()
        page, answered = answer[0]
        assert [m.mutation_id for m in page.mutations] == [f"m-{n}"], "not woken by the push"
        latencies.append(answered - started)
        cursor = page.cursor
        remote.close()
        pushing.close()
    return latencies, pushes


async def idle(urls: list[str], key: str, devices: int, seconds: float) -> int:
    """``devices`` long-polling connections for ``seconds``; the answers they got."""
    answers = 0
    request = (
        "GET /v1/sync/pull?since={since}&wait={wait} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {key}\r\nX-Cairn-Device: {{device}}\r\n\r\n"
    )
    since = int(HttpRemote(urls[0], key).pull(None).cursor)
    stop = time.monotonic() + seconds

    async def device(index: int) -> None:
        nonlocal answers
        host, port = urls[index % len(urls)].removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        ident = f"{index:032x}"
        try:
            while time.monotonic() < stop:
                wait = min(LONG_POLL, max(stop - time.monotonic(), 0.0))
                writer.write(request.format(since=since, wait=f"{wait:.1f}", device=ident).encode())
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                answers += 1
        finally:
            writer.close()

    await asyncio.gather(*(device(i) for i in range(devices)))
    return answers


def transactions(db: str | None) -> float:
    if not db:
        return 0.0
    name = conninfo.conninfo_to_dict(db)["dbname"]
    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (name,)
        ).fetchone()
    return float(row[0]) if row else 0.0


def one_backend(
    backend: str, folder: Path, db: str | None, args: argparse.Namespace
) -> list[dict[str, Any]]:
    rows = []
    for recheck in args.recheck:
        data = folder / f"{backend}-{recheck}"
        options = ["--recheck", str(recheck)]
        first = Server(data, db=db, options=options, log_path=folder / f"{backend}-{recheck}-a.log")
        with ExitStack() as stack:
            stack.enter_context(first)
            second = Server(
                data, db=db, options=options, log_path=folder / f"{backend}-{recheck}-b.log"
            )
            second.key = first.key
            stack.enter_context(second)
            log(f"{backend}, recheck {recheck} s: {args.trials} wake-ups across processes")
            latencies, pushes = wake_ups(first.url, second.url, first.key, args.trials)
            log(f"{backend}, recheck {recheck} s: {args.devices} idle devices for {args.seconds} s")
            before_pulls = pulls(first.url) + pulls(second.url)
            before_tx = transactions(db)
            started = time.monotonic()
            asyncio.run(idle([first.url, second.url], first.key, args.devices, args.seconds))
            elapsed = time.monotonic() - started
            pulled = pulls(first.url) + pulls(second.url) - before_pulls
            tx = transactions(db) - before_tx
        rows.append(
            {
                "backend": backend,
                "recheck_s": recheck,
                "wake_p50_ms": statistics.median(latencies) * 1000,
                "wake_p95_ms": statistics.quantiles(latencies, n=20)[-1] * 1000,
                "push_p50_ms": statistics.median(pushes) * 1000,
                "push_p95_ms": statistics.quantiles(pushes, n=20)[-1] * 1000,
                "after_ack_p95_ms": statistics.quantiles(
                    [w - p for w, p in zip(latencies, pushes, strict=True)], n=20
                )[-1]
                * 1000,
                "devices": args.devices,
                "seconds": round(elapsed, 1),
                "pulls_per_s": pulled / elapsed,
                "db_transactions_per_s": tx / elapsed if db else None,
            }
        )
        # The data folder of the next interval is fresh; PostgreSQL gets a fresh database.
        if db and args.new_database is not None:
            db = args.new_database()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--recheck", default="1,30", help="safety re-read intervals to compare")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.recheck = [float(r) for r in args.recheck.split(",")]
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per device
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cairn-idle-") as tmp:
        folder = Path(tmp)
        postgres = embedded_postgres(folder) if "postgres" in backends else nullcontext(None)
        with postgres as new_database:
            args.new_database = new_database
            for backend in backends:
                db = new_database() if backend == "postgres" and new_database else None
                rows += one_backend(backend, folder, db, args)
    print_table(
        f"Idle long-polls ({args.devices} devices, {args.seconds:.0f} s) and wake-ups across "
        f"two server processes ({args.trials} pushes)",
        [
            "backend",
            "recheck s",
            "wake p50 / p95 ms",
            "push p50 / p95 ms",
            "after ack p95 ms",
            "pulls/s",
            "db transactions/s",
        ],
        [
            [
                r["backend"],
                f"{r['recheck_s']:g}",
                f"{r['wake_p50_ms']:.1f} / {r['wake_p95_ms']:.1f}",
                f"{r['push_p50_ms']:.1f} / {r['push_p95_ms']:.1f}",
                f"{r['after_ack_p95_ms']:.1f}",
                f"{r['pulls_per_s']:.1f}",
                "-" if r["db_transactions_per_s"] is None else f"{r['db_transactions_per_s']:.1f}",
            ]
            for r in rows
        ],
    )
    settings = {k: v for k, v in vars(args).items() if k not in ("new_database", "json")}
    write_results("bench_idle", settings, {"runs": rows}, args.json)


if __name__ == "__main__":
    main()
