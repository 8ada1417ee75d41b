"""Load at scale (``bench_load.py --scale``): 1,000 devices, most idle, through `--workers 2`.

Per backend, ``cairn server run --workers 2`` serves ``--workspaces`` end-to-end workspaces of
``--devices / --workspaces`` devices each, every device with its own write key. The devices are
asyncio tasks spread over ``--clients`` processes, speaking real HTTP with the real client's
encoding (``binary_pages`` bodies and pages, the sync worker's 25 s long-poll, its device
header). Every device long-polls from the start; ``--active`` of them (spread evenly over the
workspaces) also push small batches (1-5 mutations of 300-800-byte sealed-shaped payloads) at
exponentially spaced moments, ``--push-every`` seconds apart on average, as agents do.

Timeline: ``--idle-seconds`` with nobody pushing (idle database load is measured over it from
``--warmup`` s in, once every worker has seen every device's key), then ``--seconds`` of pushes
(busy), then ``DRAIN`` s for the last deliveries, then every device pulls until nothing is new.

Measured: push-to-delivery latency (a push's start to its arrival at each other device of the
workspace), requests/s, the servers' database transactions/s (``cairn_db_transactions_total``
of each worker, scraped until every worker answered, minus the scrapes' own reads) and, on
PostgreSQL, ``pg_stat_database``'s transactions/s as a cross-check (it also counts NOTIFYs and
the benchmark's own queries), server RSS sampled every ``--sample`` s, errors, convergence and
gaplessness. On PostgreSQL also two server processes on different ports over one database: a
push to one waking a long-poll on the other (``bench_idle.wake_ups``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import re
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np

import bench_idle
from cairn import binary_pages
from cairn.ids import uuid7
from cairn.protocol import SEALED_HEADER, SEALED_VERSION, WireMutation, page_from_json
from cairn.remotes.http import ACCEPT_PAGES
from cairn.server import backends, keys
from common import Server, log, print_table

LONG_POLL = 25.0  # the sync worker's wait
KEEPALIVE = 4.0
"""Seconds a client keeps an idle connection: under the server's 5 s, so the client always
closes first (at httpx's default of 5 s a request now and then met the server's close)."""
DRAIN = 10.0  # seconds after the last push for deliveries to finish
PAYLOAD_BYTES = (300, 800)
BATCH = (1, 5)
PUSH_TIMEOUT = 30.0  # the real client's (HttpRemote's default)


# --- setup (this process, before the server starts) --------------------------------------------


def make_workspaces(
    data: Path, db: str | None, workspaces: int, per_workspace: int
) -> list[list[str]]:
    """``workspaces`` e2e workspaces with ``per_workspace`` write keys each; the keys by
    workspace (each workspace's admin key last)."""
    storage = backends.open_storage(data, db)
    now = int(time.time() * 1000)
    tokens = []
    try:
        for w in range(workspaces):
            workspace, admin = keys.create_workspace(storage, f"scale-{w}", now)
            made = [
                keys.issue(storage, workspace.id, f"device-{d}", ["write"], now)[1]
                for d in range(per_workspace)
            ]
            tokens.append([*made, admin])
    finally:
        storage.close()
    return tokens


# --- one client process: many devices as asyncio tasks -----------------------------------------


def sealed_payload(rng: random.Random) -> bytes:
    size = rng.randint(*PAYLOAD_BYTES)
    header = SEALED_HEADER.pack(SEALED_VERSION, 1, rng.randbytes(16), rng.randbytes(12))
    return header + rng.randbytes(size - len(header))


class Tally:
    """Requests and errors of one client process, by phase."""

    def __init__(self, idle_end: float, busy_end: float) -> None:
        self.idle_end = idle_end
        self.busy_end = busy_end
        self.requests = {"idle": 0, "busy": 0, "final": 0}
        self.errors: list[dict[str, Any]] = []

    def phase(self, at: float) -> str:
        return "idle" if at < self.idle_end else "busy" if at < self.busy_end else "final"

    def failed(self, kind: str, detail: str) -> None:
        at = time.time()
        self.errors.append({"kind": kind, "phase": self.phase(at), "at": at, "detail": detail})


async def pull_loop(
    client: httpx.AsyncClient,
    device: dict[str, Any],
    until: float,
    pushed: asyncio.Event,
    tally: Tally,
) -> dict[str, Any]:
    """Long-poll (and page) until ``until``, then, once every device everywhere stopped
    pushing (``pushed``), pull until nothing is new; what arrived when."""
    headers = {
        "Authorization": f"Bearer {device['token']}",
        "X-Cairn-Device": device["id"],
        "Accept": ACCEPT_PAGES,
    }
    cursor = "0"
    received: list[tuple[str, float]] = []
    seqs: list[int] = []
    final = False
    while True:
        now = time.time()
        if now >= until and not final:
            await pushed.wait()  # a batch retried past the deadline is still delivered
            final = True
        wait = 0.0 if final else min(LONG_POLL, max(until - now, 0.0))
        params: dict[str, Any] = {"since": cursor, "limit": 1000}
        if wait > 0:
            params["wait"] = round(wait, 1)
        try:
            response = await client.get(
                "/v1/sync/pull", params=params, headers=headers, timeout=wait + 60
            )
        except httpx.HTTPError as exc:
            tally.failed("pull", f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(1)
            continue
        at = time.time()
        tally.requests[tally.phase(at)] += 1
        if response.status_code != 200:
            tally.failed("pull", f"{response.status_code} {response.text[:200]}")
            await asyncio.sleep(1)
            continue
        if binary_pages.is_binary(response.headers.get("content-type")):
            page = binary_pages.unpack_page(response.content)
        else:
            page = page_from_json(response.json())
        received.extend((m.mutation_id, at) for m in page.mutations)
        seqs.extend(m.seq or 0 for m in page.mutations)
        cursor = page.cursor
        if final and not page.has_more:
            return {"received": received, "seqs": seqs}


async def push_loop(
    client: httpx.AsyncClient,
    device: dict[str, Any],
    start: float,
    end: float,
    every: float,
    tally: Tally,
) -> list[dict[str, Any]]:
    """Push a small batch at exponentially spaced moments between ``start`` and ``end``; each
    acknowledged push's start time and mutation ids. A failed batch is sent again next time."""
    rng = random.Random(device["seed"])
    headers = {
        "Authorization": f"Bearer {device['token']}",
        "X-Cairn-Device": device["id"],
        "Content-Type": binary_pages.MEDIA_TYPE,
    }
    pushed: list[dict[str, Any]] = []
    pending: list[WireMutation] = []
    at = start + rng.uniform(0, every)
    n = 0
    while True:
        await asyncio.sleep(max(0.0, at - time.time()))
        if time.time() >= end:
            break
        if not pending:
            pending = []
            for _ in range(rng.randint(*BATCH)):
                n += 1
                hlc = f"{int(time.time() * 1000):013d}-{n:04d}-{device['id']}"
                pending.append(
                    WireMutation(uuid7(), device["id"], hlc, uuid7(), None, sealed_payload(rng))
                )
        began = time.time()
        try:
            response = await client.post(
                "/v1/sync/push",
                content=binary_pages.pack_push(pending),
                headers=headers,
                timeout=PUSH_TIMEOUT,
            )
            tally.requests[tally.phase(began)] += 1
            if response.status_code == 200:
                pushed.append({"at": began, "ids": [m.mutation_id for m in pending]})
                pending = []
            else:
                tally.failed("push", f"{response.status_code} {response.text[:200]}")
        except httpx.HTTPError as exc:
            tally.failed("push", f"{type(exc).__name__}: {exc}")
        at = max(at, began) + rng.expovariate(1 / every)
    for _ in range(5):  # a batch whose push failed is still the device's to deliver
        if not pending:
            break
        began = time.time()
        try:
            response = await client.post(
                "/v1/sync/push",
                content=binary_pages.pack_push(pending),
                headers=headers,
                timeout=PUSH_TIMEOUT,
            )
            tally.requests["final"] += 1
            if response.status_code == 200:
                pushed.append({"at": began, "ids": [m.mutation_id for m in pending]})
                pending = []
                break
            tally.failed("push", f"{response.status_code} {response.text[:200]}")
        except httpx.HTTPError as exc:
            tally.failed("push", f"{type(exc).__name__}: {exc}")
        await asyncio.sleep(1)
    return pushed


def run_client(spec: dict[str, Any], ready: Any, go: Any, start_at: Any, all_pushed: Any) -> None:
    """A client process: its devices' loops from the common start; results to ``spec['out']``.
    ``all_pushed``: a barrier of every client process, passed once each stopped pushing."""

    async def main() -> dict[str, Any]:
        start = start_at.value
        idle_end = start + spec["idle_seconds"]
        busy_end = idle_end + spec["seconds"]
        tally = Tally(idle_end, busy_end)
        limits = httpx.Limits(
            max_connections=None, max_keepalive_connections=None, keepalive_expiry=KEEPALIVE
        )
        async with httpx.AsyncClient(base_url=spec["url"], limits=limits) as client:
            await asyncio.sleep(max(0.0, start - time.time()))
            done = asyncio.Event()

            async def pushing() -> list[list[dict[str, Any]]]:
                pushes = [
                    push_loop(client, device, idle_end, busy_end, spec["push_every"], tally)
                    for device in spec["devices"]
                    if device["active"]
                ]
                results = await asyncio.gather(*pushes)
                await asyncio.to_thread(all_pushed.wait, 900)
                done.set()
                return list(results)

            pulls = [
                pull_loop(client, device, busy_end + DRAIN, done, tally)
                for device in spec["devices"]
            ]
            *pulled, pushed = await asyncio.gather(*pulls, pushing())
        active = [d for d in spec["devices"] if d["active"]]
        return {
            "devices": [
                {"id": d["id"], "workspace": d["workspace"], **p}
                for d, p in zip(spec["devices"], pulled, strict=True)
            ],
            "pushes": [
                {"device": d["id"], "workspace": d["workspace"], "pushed": p}
                for d, p in zip(active, pushed, strict=True)
            ],
            "requests": tally.requests,
            "errors": tally.errors,
        }

    ready.put(os.getpid())
    go.wait()
    result = asyncio.run(main())
    Path(spec["out"]).write_text(json.dumps(result), encoding="utf-8")


# --- what the server costs ----------------------------------------------------------------------

_PID = re.compile(r'^cairn_process\{pid="(\d+)"\} 1$', re.MULTILINE)
_TX = re.compile(r'^cairn_db_transactions_total\{access="(\w+)"\} (\d+)$', re.MULTILINE)


def worker_transactions(url: str, workers: int) -> dict[int, int]:
    """Each worker's transactions so far (read + write), by pid: /metrics is scraped on fresh
    connections until every worker answered. A scrape's count leaves out its own read of the
    totals, which the next scrape of that worker then includes (``transactions_between``)."""
    seen: dict[int, int] = {}
    deadline = time.monotonic() + 300  # a worker uvicorn restarted takes a while to answer
    while time.monotonic() < deadline:
        text = httpx.get(f"{url}/metrics", timeout=60).text
        found = _PID.search(text)
        assert found, "the server's metrics name no process"
        pid = int(found.group(1))
        if pid not in seen:
            seen[pid] = sum(int(n) for _, n in _TX.findall(text))
        if len(seen) == workers:
            return seen
        time.sleep(0.02)
    raise SystemExit(f"only {len(seen)} of {workers} workers answered /metrics in 300 s")


def transactions_between(before: dict[int, int], after: dict[int, int]) -> int:
    """Transactions the workers began between two ``worker_transactions`` readings, without
    the first reading's own scrapes (one read each)."""
    return sum(after[pid] - before[pid] - 1 for pid in before)


def pg_transactions(db: str | None) -> float | None:
    return bench_idle.transactions(db) if db else None


def rss_mib(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        if found:
            out[pid] = round(int(found.group(1)) / 1024, 1)
    return out


def server_pids(root: int) -> list[int]:
    children = Path(f"/proc/{root}/task/{root}/children")
    found = [int(p) for p in children.read_text().split()] if children.exists() else []
    return [root, *found]


# --- one backend --------------------------------------------------------------------------------


def one_backend(
    backend: str, folder: Path, db: str | None, args: argparse.Namespace
) -> dict[str, Any]:
    per_workspace = args.devices // args.workspaces
    active_per_workspace = args.active // args.workspaces
    data = folder / f"{backend}-server"
    log(f"{backend}: {args.workspaces} workspaces of {per_workspace} devices (keys made)")
    tokens = make_workspaces(data, db, args.workspaces, per_workspace)
    devices = [
        {
            "id": f"{w:03d}{d:05d}".ljust(32, "0"),
            "workspace": w,
            "token": tokens[w][d],
            "active": d < active_per_workspace,
            "seed": w * 100_000 + d,
        }
        for w in range(args.workspaces)
        for d in range(per_workspace)
    ]
    server = Server(data, db=db, workers=args.workers, options=["--log-level", "warning"])
    server.key = tokens[0][-1]
    server.startup = 300.0  # a loaded machine: uvicorn restarts workers slow to answer its pings
    ctx = multiprocessing.get_context("spawn")
    ready, go, start_at = ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    all_pushed = ctx.Barrier(args.clients)
    with ExitStack() as stack:
        stack.enter_context(server)
        assert server.proc is not None
        specs = [
            {
                "url": server.url,
                "devices": devices[c :: args.clients],
                "idle_seconds": args.idle_seconds,
                "seconds": args.seconds,
                "push_every": args.push_every,
                "out": str(folder / f"{backend}-client-{c}.json"),
            }
            for c in range(args.clients)
        ]
        worker_transactions(server.url, args.workers)  # every worker is up
        procs = [
            ctx.Process(target=run_client, args=(s, ready, go, start_at, all_pushed)) for s in specs
        ]
        for proc in procs:
            proc.start()
        for _ in procs:
            ready.get(timeout=120)
        start = time.time() + 2.0
        start_at.value = start
        go.set()
        idle_from, idle_end = start + args.warmup, start + args.idle_seconds
        busy_end = idle_end + args.seconds
        rss: list[dict[str, Any]] = []
        marks: dict[str, Any] = {}

        def at(moment: float, name: str) -> None:
            while time.time() < moment:
                pids = server_pids(server.proc.pid)  # type: ignore[union-attr]
                rss.append({"t": round(time.time() - start, 1), "mib": rss_mib(pids)})
                time.sleep(max(0.0, min(args.sample, moment - time.time())))
            marks[name] = {
                "t": time.time(),
                "workers": worker_transactions(server.url, args.workers),
                "pg": pg_transactions(db),
                "load": os.getloadavg()[0],
            }
            log(f"  {name} at {marks[name]['t'] - start:.0f} s, load {marks[name]['load']:.2f}")

        at(idle_from, "idle_from")
        at(idle_end, "idle_end")
        at(busy_end, "busy_end")
        for proc in procs:
            proc.join(DRAIN + 600)
        if any(p.exitcode != 0 for p in procs):
            raise SystemExit(f"a client process failed: {[p.exitcode for p in procs]}")
        status = [
            httpx.get(
                f"{server.url}/v1/sync/status",
                headers={"Authorization": f"Bearer {tokens[w][-1]}"},
                timeout=60,
            ).json()
            for w in range(args.workspaces)
        ]
        rss.append(
            {"t": round(time.time() - start, 1), "mib": rss_mib(server_pids(server.proc.pid))}
        )
        server_log = server.log_text()
    clients = [json.loads(Path(s["out"]).read_text()) for s in specs]
    return summarize(backend, args, clients, status, marks, rss, server_log, per_workspace)


def summarize(
    backend: str,
    args: argparse.Namespace,
    clients: list[dict[str, Any]],
    status: list[dict[str, Any]],
    marks: dict[str, Any],
    rss: list[dict[str, Any]],
    server_log: str,
    per_workspace: int,
) -> dict[str, Any]:
    devices = [d for c in clients for d in c["devices"]]
    pushes = [p for c in clients for p in c["pushes"]]
    errors = [e for c in clients for e in c["errors"]]
    requests = {k: sum(c["requests"][k] for c in clients) for k in ("idle", "busy", "final")}
    acked: dict[int, set[str]] = {}
    sent_at: dict[str, tuple[float, str]] = {}
    for p in pushes:
        for push in p["pushed"]:
            acked.setdefault(p["workspace"], set()).update(push["ids"])
            for mid in push["ids"]:
                sent_at[mid] = (push["at"], p["device"])
    latencies = []
    converged = gapless = True
    missing = unacknowledged = 0
    for d in devices:
        got = [mid for mid, _ in d["received"]]
        want = acked.get(d["workspace"], set())
        converged &= set(got) == want and len(got) == len(want)
        missing += len(want - set(got))
        unacknowledged += len(set(got) - want)
        latest = int(status[d["workspace"]]["latest_seq"])
        gapless &= sorted(d["seqs"]) == list(range(1, latest + 1))
        for mid, when in d["received"]:
            began, pusher = sent_at.get(mid, (None, None))
            if began is not None and pusher != d["id"]:
                latencies.append(when - began)
    gapless &= all(
        int(s["latest_seq"]) == int(s["mutations"]) == len(acked.get(w, ()))
        for w, s in enumerate(status)
    )
    idle_s = marks["idle_end"]["t"] - marks["idle_from"]["t"]
    busy_s = marks["busy_end"]["t"] - marks["idle_end"]["t"]
    idle_tx = transactions_between(marks["idle_from"]["workers"], marks["idle_end"]["workers"])
    busy_tx = transactions_between(marks["idle_end"]["workers"], marks["busy_end"]["workers"])
    pg = {
        phase: (marks[b]["pg"] - marks[a]["pg"]) / (marks[b]["t"] - marks[a]["t"])
        if marks[a]["pg"] is not None
        else None
        for phase, (a, b) in {
            "idle": ("idle_from", "idle_end"),
            "busy": ("idle_end", "busy_end"),
        }.items()
    }
    ms = np.asarray(latencies) * 1000 if latencies else np.asarray([np.nan])
    by_process: dict[str, list[float]] = {}
    for sample in rss:
        for pid, mib in sample["mib"].items():
            by_process.setdefault(str(pid), []).append(mib)
    mutations = sum(len(p["ids"]) for ps in pushes for p in ps["pushed"])
    return {
        "backend": backend,
        "workers": args.workers,
        "devices": len(devices),
        "workspaces": args.workspaces,
        "devices_per_workspace": per_workspace,
        "active": sum(1 for p in pushes),
        "idle_seconds_measured": round(idle_s, 1),
        "busy_seconds": round(busy_s, 1),
        "pushes": sum(len(p["pushed"]) for p in pushes),
        "mutations_pushed": mutations,
        "pushes_per_s": round(sum(len(p["pushed"]) for p in pushes) / busy_s, 2),
        "requests": requests,
        "requests_per_s": {
            "idle": round(requests["idle"] / args.idle_seconds, 1),
            "busy": round(requests["busy"] / args.seconds, 1),
        },
        "db_tx_per_s": {"idle": round(idle_tx / idle_s, 3), "busy": round(busy_tx / busy_s, 2)},
        "db_tx_per_s_per_100_devices_idle": round(idle_tx / idle_s / len(devices) * 100, 4),
        "pg_stat_xact_per_s": {k: None if v is None else round(v, 2) for k, v in pg.items()},
        "deliveries": len(latencies),
        "delivery_p50_ms": round(float(np.percentile(ms, 50)), 1),
        "delivery_p99_ms": round(float(np.percentile(ms, 99)), 1),
        "delivery_max_ms": round(float(np.max(ms)), 1),
        "rss_mib": {
            pid: {"first": v[0], "max": max(v), "last": v[-1], "samples": len(v)}
            for pid, v in by_process.items()
        },
        "rss_samples": rss,
        "errors": len(errors),
        "errors_by_phase": {p: sum(1 for e in errors if e["phase"] == p) for p in requests},
        "error_samples": errors[:10],
        "converged": converged,
        "gapless": gapless,
        "missing_deliveries": missing,
        "received_unacknowledged": unacknowledged,
        "stored_minus_acknowledged": sum(int(st["mutations"]) for st in status)
        - sum(len(ids) for ids in acked.values()),
        "server_log_errors": sum(
            1 for line in server_log.splitlines() if "Traceback" in line or "ERROR" in line
        ),
        "load_average": {name: round(mark["load"], 2) for name, mark in marks.items()},
    }


def wake_ups_across_hosts(folder: Path, db: str, trials: int) -> dict[str, Any]:
    """Two server processes on different ports over one PostgreSQL database: a push to one
    wakes a long-poll on the other (``bench_idle.wake_ups``)."""
    first = Server(folder / "hosts", db=db, log_path=folder / "host-a.log")
    with first:
        second = Server(folder / "hosts", db=db, log_path=folder / "host-b.log")
        second.key = first.key
        with second:
            latencies, pushes = bench_idle.wake_ups(first.url, second.url, first.key, trials)
    return {
        "trials": trials,
        "wake_p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
        "wake_p95_ms": round(float(np.percentile(latencies, 95)) * 1000, 1),
        "push_p50_ms": round(float(np.percentile(pushes, 50)) * 1000, 1),
        "load_average": round(os.getloadavg()[0], 2),
    }


def _pair(rates: dict[str, float | None]) -> str:
    if rates["idle"] is None or rates["busy"] is None:
        return "-"
    return f"{rates['idle']:.2f} / {rates['busy']:.1f}"


def report(results: list[dict[str, Any]], hosts: dict[str, Any] | None) -> None:
    r0 = results[0]
    print_table(
        f"{r0['devices']} devices ({r0['active']} pushing) in {r0['workspaces']} workspaces "
        f"through `cairn server run --workers {r0['workers']}`",
        [
            "backend",
            "delivery p50 / p99 ms",
            "req/s idle / busy",
            "pushes/s",
            "db tx/s idle (per 100 dev) / busy",
            "pg_stat xact/s idle / busy",
            "server RSS MiB first / max / last",
            "errors",
            "converged, gapless",
        ],
        [
            [
                r["backend"],
                f"{r['delivery_p50_ms']:.0f} / {r['delivery_p99_ms']:.0f}",
                f"{r['requests_per_s']['idle']:.1f} / {r['requests_per_s']['busy']:.1f}",
                f"{r['pushes_per_s']:.1f}",
                f"{r['db_tx_per_s']['idle']:.3f} ({r['db_tx_per_s_per_100_devices_idle']:.4f})"
                f" / {r['db_tx_per_s']['busy']:.1f}",
                _pair(r["pg_stat_xact_per_s"]),
                ", ".join(
                    f"{v['first']:.0f} / {v['max']:.0f} / {v['last']:.0f}"
                    for v in r["rss_mib"].values()
                ),
                r["errors"],
                f"{'yes' if r['converged'] else 'NO'}, {'yes' if r['gapless'] else 'NO'}",
            ]
            for r in results
        ],
    )
    if hosts:
        print_table(
            "Two server processes on different ports over one PostgreSQL: a push to one wakes "
            "a long-poll on the other",
            ["trials", "wake p50 ms", "wake p95 ms", "push p50 ms", "load average"],
            [
                [
                    hosts["trials"],
                    hosts["wake_p50_ms"],
                    hosts["wake_p95_ms"],
                    hosts["push_p50_ms"],
                    hosts["load_average"],
                ]
            ],
        )
