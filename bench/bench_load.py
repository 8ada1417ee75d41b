"""Load: K simulated devices (separate processes) push and pull through one sync server at once.

For each backend (embedded SQLite, PostgreSQL) and each worker count, ``cairn server run
--workers W`` starts on a free port with a fresh data folder or database (rate limiting off:
``--rate-limit 0``) and one end-to-end workspace, and gets one write key per device. K device
processes (multiprocessing, spawn) then loop for S seconds, all starting together: push a batch
of N new mutations (random 300-800-byte payloads shaped as sealed envelopes, unique ids, the
device's own id, HLCs from its own clock), then pull everything new since their cursor, page by
page, with the real client (``cairn.remotes.http.HttpRemote``). Each request's latency is kept
by kind; any exception (a non-2xx answer included) is an error. A failed push is retried with
the same mutations (the server deduplicates by mutation id), as a device's outbox would.

When the time is up every device waits for the others to stop pushing, pulls until nothing is
new and reports the mutation ids and sequence numbers it pulled. Converged means every device
pulled every mutation any device had acknowledged, and nothing else; gapless means the server's
latest seq equals its mutation count and every device saw each of the seqs 1..latest once.

    .venv/bin/python bench/bench_load.py [--devices 8] [--seconds 20] [--workers 1,2]
        [--backend sqlite|postgres|both] [--batch 20] [--quick] [--json PATH]

``--scale``: 1,000 devices, 900 idle and 100 pushing, through `--workers 2` (``load_scale``):

    .venv/bin/python bench/bench_load.py --scale [--devices 1000] [--active 100]
        [--workspaces 50] [--push-every 10] [--idle-seconds 120] [--warmup 60] [--seconds 300]
        [--clients 4] [--backend sqlite|postgres|both] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import load_scale
from cairn.hlc import HLC, observe, tick
from cairn.ids import new_device_id, uuid7
from cairn.protocol import SEALED_HEADER, SEALED_VERSION, WireMutation
from cairn.remotes.http import HttpRemote
from common import (
    CACHE,
    CAIRN,
    RESULTS,
    Server,
    embedded_postgres,
    log,
    peak_rss_mib,
    postmaster_pid,
    print_table,
    tree_cpu,
    uncommitted_src,
    write_results,
)

PAYLOAD_BYTES = (300, 800)
PULL_LIMIT = 1000  # the client's default page
KEY_ID = 1  # the (pretend) workspace key the envelopes name
START_DELAY = 0.5  # seconds between "all devices ready" and the common start
FINAL_TIMEOUT = 120.0  # seconds a device waits for the others to stop pushing


# --- one device (its own process) ----------------------------------------------------------------


@dataclass(frozen=True)
class DeviceSpec:
    index: int
    url: str
    key: str
    batch: int
    seconds: float
    out: Path


def sealed_payload(rng: random.Random) -> bytes:
    """Random bytes shaped as a sealed envelope: version, key id, salt, nonce, ciphertext, tag."""
    size = rng.randint(*PAYLOAD_BYTES)
    header = SEALED_HEADER.pack(SEALED_VERSION, KEY_ID, os.urandom(16), os.urandom(12))
    return header + os.urandom(size - len(header))  # the last 16 random bytes stand for the tag


class Device:
    """One simulated device: its id, clock, cursor, what it pushed and pulled, and its timings."""

    def __init__(self, spec: DeviceSpec) -> None:
        self.spec = spec
        self.id = new_device_id()
        self.remote = HttpRemote(spec.url, spec.key, self.id)
        self.rng = random.Random(spec.index)
        self.clock = HLC(0, 0, self.id)
        self.cursor: str | None = None
        self.acked: list[str] = []
        self.stored = self.duplicates = 0
        self.pulled_ids: list[str] = []
        self.pulled_seqs: list[int] = []
        self.pulled_in_window = 0
        self.latency: dict[str, list[float]] = {"push": [], "pull": []}
        self.errors: list[dict[str, Any]] = []
        self.last_end = 0.0

    def new_batch(self) -> list[WireMutation]:
        batch = []
        for _ in range(self.spec.batch):
            self.clock = tick(self.clock, int(time.time() * 1000))
            batch.append(
                WireMutation(
                    uuid7(),
                    self.id,
                    self.clock.pack(),
                    uuid7(),
                    None,
                    sealed_payload(self.rng),
                )
            )
        return batch

    def push(self, batch: list[WireMutation], start: float | None) -> bool:
        """One push; True when the server acknowledged it. Timed when ``start`` is given."""
        began = time.monotonic()
        try:
            result = self.remote.push(batch)
        except Exception as exc:  # every failure counts, whatever its kind
            self._failed("push", exc, began, start)
            return False
        self._timed("push", began, start)
        self.stored += result.stored
        self.duplicates += result.duplicates
        self.acked.extend(m.mutation_id for m in batch)
        return True

    def pull_all(self, start: float | None) -> bool:
        """Pull pages until the server has nothing newer; False when a pull failed."""
        while True:
            began = time.monotonic()
            try:
                page = self.remote.pull(self.cursor, PULL_LIMIT)
            except Exception as exc:
                self._failed("pull", exc, began, start)
                return False
            self._timed("pull", began, start)
            self.pulled_ids.extend(m.mutation_id for m in page.mutations)
            self.pulled_seqs.extend(m.seq or 0 for m in page.mutations)
            if start is not None:
                self.pulled_in_window += len(page.mutations)
            if page.mutations:
                newest = max(HLC.unpack(m.hlc) for m in page.mutations)
                self.clock = observe(self.clock, newest, int(time.time() * 1000))
            self.cursor = page.cursor
            if not page.has_more:
                return True

    def _timed(self, kind: str, began: float, start: float | None) -> None:
        end = time.monotonic()
        if start is not None:
            self.latency[kind].append(end - began)
            self.last_end = end

    def _failed(self, kind: str, exc: Exception, began: float, start: float | None) -> None:
        self._timed(kind, began, start)
        self.errors.append(
            {
                "kind": kind,
                "phase": "timed" if start is not None else "final",
                "at_s": round(began - start, 3) if start is not None else None,
                "after_ms": round((time.monotonic() - began) * 1000, 1),
                "type": type(exc).__name__,
                "code": getattr(exc, "code", None),
                "message": str(exc)[:400],
            }
        )


def run_device(
    spec: DeviceSpec,
    ready: Any,
    go: Any,
    start_at: Any,
    pushed: Any,
) -> None:
    """A device process: warm up, wait for the common start, push and pull until the deadline,
    then (once every device stopped pushing) pull until nothing is new; results to ``spec.out``."""
    device = Device(spec)
    device.remote.status()  # opens the connection before the clock starts
    ready.put(spec.index)
    go.wait()
    start = start_at.value
    time.sleep(max(0.0, start - time.monotonic()))
    deadline = start + spec.seconds
    cpu = time.process_time()
    pending: list[WireMutation] = []
    while time.monotonic() < deadline:
        pending = pending or device.new_batch()
        if device.push(pending, start):
            pending = []
        device.pull_all(start)
    timed_cpu = time.process_time() - cpu

    for _ in range(5):  # a batch whose push failed is still the device's to deliver
        if not pending or device.push(pending, None):
            break
        time.sleep(0.5)
    pushed.wait(FINAL_TIMEOUT)
    began = time.monotonic()
    caught_up = any(device.pull_all(None) for _ in range(5))
    final_s = time.monotonic() - began
    device.remote.close()
    result = {
        "index": spec.index,
        "device_id": device.id,
        "stored": device.stored,
        "duplicates": device.duplicates,
        "acked": device.acked,
        "undelivered": len(pending),
        "pulled_ids": device.pulled_ids,
        "pulled_seqs": device.pulled_seqs,
        "pulled_in_window": device.pulled_in_window,
        "final_pull_ok": caught_up,
        "final_pull_s": round(final_s, 3),
        "latency": device.latency,
        "errors": device.errors,
        "last_end_s": device.last_end - start,
        "client_cpu_s": round(timed_cpu, 2),
    }
    spec.out.write_text(json.dumps(result), encoding="utf-8")


# --- one run -------------------------------------------------------------------------------------


def percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"n": 0}
    ms = np.asarray(seconds) * 1000.0
    return {
        "n": int(ms.size),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "max_ms": round(float(ms.max()), 2),
    }


def one_run(
    backend: str, workers: int, args: argparse.Namespace, tmp: Path, db: str | None
) -> dict[str, Any]:
    label = f"{backend}-w{workers}"
    folder = tmp / label
    folder.mkdir()
    with Server(folder / "server", "e2e", db, workers) as server:
        keys = [server.new_key(f"device-{i}") for i in range(args.devices)]
        ctx = multiprocessing.get_context("spawn")
        ready, go, pushed = ctx.Queue(), ctx.Event(), ctx.Barrier(args.devices)
        start_at = ctx.Value("d", 0.0)
        specs = [
            DeviceSpec(i, server.url, key, args.batch, args.seconds, folder / f"device-{i}.json")
            for i, key in enumerate(keys)
        ]
        procs = [
            ctx.Process(target=run_device, args=(spec, ready, go, start_at, pushed))
            for spec in specs
        ]
        for proc in procs:
            proc.start()
        for _ in procs:
            ready.get(timeout=120)
        start = time.monotonic() + START_DELAY
        start_at.value = start
        go.set()
        time.sleep(max(0.0, start - time.monotonic()))
        assert server.proc is not None
        server_cpu = tree_cpu(server.proc.pid)
        pg_pid = postmaster_pid(tmp) if db else None
        pg_cpu = sum(tree_cpu(pg_pid).values()) if pg_pid else 0.0
        time.sleep(max(0.0, start + args.seconds - time.monotonic()))
        server_cpu_end = tree_cpu(server.proc.pid)
        pg_cpu_end = sum(tree_cpu(pg_pid).values()) if pg_pid else 0.0
        for proc in procs:
            proc.join(args.seconds + 2 * FINAL_TIMEOUT)
        failed = [p.exitcode for p in procs if p.exitcode != 0]
        if failed:
            raise SystemExit(f"{len(failed)} device process(es) failed (exit codes {failed})")
        admin = HttpRemote(server.url, server.key)
        status = admin.status()
        admin.close()
        server_log = server.log_text()
    devices = [json.loads(spec.out.read_text()) for spec in specs]
    return summarize_run(
        backend,
        workers,
        args,
        devices,
        status,
        {pid: round(cpu - server_cpu.get(pid, 0.0), 2) for pid, cpu in server_cpu_end.items()},
        round(pg_cpu_end - pg_cpu, 2),
        server_log,
    )


def summarize_run(
    backend: str,
    workers: int,
    args: argparse.Namespace,
    devices: list[dict[str, Any]],
    status: dict[str, Any],
    server_cpu: dict[int, float],
    postgres_cpu: float,
    server_log: str,
) -> dict[str, Any]:
    elapsed = max(args.seconds, *(d["last_end_s"] for d in devices))
    push = [s for d in devices for s in d["latency"]["push"]]
    pull = [s for d in devices for s in d["latency"]["pull"]]
    errors = [e for d in devices for e in d["errors"]]
    acked = {m for d in devices for m in d["acked"]}
    stored = sum(d["stored"] for d in devices)
    latest = int(status["latest_seq"])
    missing = {d["index"]: len(acked - set(d["pulled_ids"])) for d in devices}
    extra = {d["index"]: len(set(d["pulled_ids"]) - acked) for d in devices}
    seqs_ok = all(sorted(d["pulled_seqs"]) == list(range(1, latest + 1)) for d in devices)
    converged = not any(missing.values()) and not any(extra.values())
    gapless = latest == int(status["mutations"]) == len(acked) and seqs_ok
    timed = [e for e in errors if e["phase"] == "timed"]
    by_cause: dict[str, int] = {}
    for e in errors:
        cause = f"{e['kind']} {e['type']} {e['code'] or ''}".strip()
        by_cause[cause] = by_cause.get(cause, 0) + 1
    return {
        "backend": backend,
        "workers": workers,
        "devices": len(devices),
        "seconds": round(elapsed, 2),
        "batch": args.batch,
        "requests": len(push) + len(pull),
        "requests_per_s": round((len(push) + len(pull)) / elapsed, 1),
        "push": {**percentiles(push), "per_s": round(len(push) / elapsed, 1)},
        "pull": {**percentiles(pull), "per_s": round(len(pull) / elapsed, 1)},
        "mutations_pushed": stored,
        "mutations_pushed_per_s": round(stored / elapsed, 1),
        "mutations_pulled_per_s": round(sum(d["pulled_in_window"] for d in devices) / elapsed, 1),
        "duplicates": sum(d["duplicates"] for d in devices),
        "errors": len(timed),
        "errors_after_deadline": len(errors) - len(timed),
        "errors_by_cause": by_cause,
        "error_samples": errors[:10],
        "undelivered_mutations": sum(d["undelivered"] for d in devices),
        "converged": converged,
        "gapless": gapless,
        "server_latest_seq": latest,
        "server_mutations": int(status["mutations"]),
        "acknowledged_mutations": len(acked),
        "missing_per_device": missing,
        "unacknowledged_per_device": extra,
        "final_pull_s_max": max(d["final_pull_s"] for d in devices),
        "server_cpu_s": round(sum(server_cpu.values()), 2),
        "server_cpu_by_process": {str(pid): cpu for pid, cpu in server_cpu.items()},
        "postgres_cpu_s": postgres_cpu,
        "devices_cpu_s": round(sum(d["client_cpu_s"] for d in devices), 2),
        "server_log_errors": sum(
            1 for line in server_log.splitlines() if "Traceback" in line or "ERROR" in line
        ),
    }


# --- the whole benchmark -------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=None, help="devices (default 8; 1000)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds of load (20; 300)")
    parser.add_argument(
        "--workers",
        type=lambda text: [int(w) for w in text.split(",")],
        default=None,
        metavar="W,W",
        help="server worker counts to run, comma-separated (default 1,2; --scale: 2)",
    )
    scale = parser.add_argument_group("--scale: many asynchronous devices, most of them idle")
    scale.add_argument("--scale", action="store_true", help="run the scale mode (load_scale)")
    scale.add_argument("--active", type=int, default=100, help="devices that push")
    scale.add_argument("--workspaces", type=int, default=50, help="devices share these evenly")
    scale.add_argument(
        "--push-every", type=float, default=10.0, help="mean seconds between a device's pushes"
    )
    scale.add_argument(
        "--idle-seconds", type=float, default=120.0, help="seconds before anyone pushes"
    )
    scale.add_argument(
        "--warmup",
        type=float,
        default=60.0,
        help="seconds of the idle phase before its load is measured (caches filling)",
    )
    scale.add_argument("--clients", type=int, default=4, help="client processes")
    scale.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    scale.add_argument("--trials", type=int, default=20, help="wake-ups across two hosts")
    parser.add_argument(
        "--backend",
        choices=["sqlite", "postgres", "both"],
        default="both",
        help="server storage: embedded SQLite, PostgreSQL (embedded-postgres) or both",
    )
    parser.add_argument("--batch", type=int, default=20, help="mutations per push")
    parser.add_argument(
        "--quick", action="store_true", help="3 devices, 3 s, batches of 10: to check the script"
    )
    parser.add_argument(
        "--json", type=Path, default=RESULTS / "bench_load.json", help="where the results go"
    )
    args = parser.parse_args()
    if not CAIRN.exists():
        raise SystemExit(f"{CAIRN} is missing; install Cairn (make install) first")
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    if args.scale:
        scale_main(args, backends)
        return
    args.devices = 8 if args.devices is None else args.devices
    args.seconds = 20.0 if args.seconds is None else args.seconds
    args.workers = [1, 2] if args.workers is None else args.workers
    if args.quick:
        args.devices, args.seconds, args.batch = 3, 3.0, 10

    results = []
    CACHE.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp_name:
        tmp = Path(tmp_name)
        postgres = embedded_postgres(tmp) if "postgres" in backends else nullcontext(None)
        with postgres as new_database:
            for backend in backends:
                for workers in args.workers:
                    db = new_database() if backend == "postgres" and new_database else None
                    log(
                        f"{backend}, {workers} worker(s): {args.devices} devices for "
                        f"{args.seconds:g} s, batches of {args.batch}"
                    )
                    result = one_run(backend, workers, args, tmp, db)
                    log(
                        f"  {result['requests_per_s']:,.0f} req/s, "
                        f"{result['mutations_pushed_per_s']:,.0f} mutations/s pushed, "
                        f"{result['errors']} errors, converged {result['converged']}"
                    )
                    results.append(result)

    print_table(
        f"{args.devices} devices pushing (batches of {args.batch}) and pulling through "
        "`cairn server run --workers W --rate-limit 0`",
        [
            "backend",
            "workers",
            "devices",
            "seconds",
            "requests",
            "req/s",
            "push p50 ms",
            "push p99 ms",
            "pull p50 ms",
            "pull p99 ms",
            "mutations/s pushed",
            "errors",
            "converged",
        ],
        [
            [
                r["backend"],
                r["workers"],
                r["devices"],
                r["seconds"],
                r["requests"],
                r["requests_per_s"],
                r["push"].get("p50_ms", "-"),
                r["push"].get("p99_ms", "-"),
                r["pull"].get("p50_ms", "-"),
                r["pull"].get("p99_ms", "-"),
                r["mutations_pushed_per_s"],
                r["errors"],
                "yes" if r["converged"] and r["gapless"] else "NO",
            ]
            for r in results
        ],
    )
    print_table(
        "Where the CPU went during the timed window (CPU seconds)",
        ["backend", "workers", "server", "per server process", "PostgreSQL", "devices", "pulled/s"],
        [
            [
                r["backend"],
                r["workers"],
                r["server_cpu_s"],
                " / ".join(f"{c:g}" for c in r["server_cpu_by_process"].values()),
                r["postgres_cpu_s"] if r["backend"] == "postgres" else "-",
                r["devices_cpu_s"],
                r["mutations_pulled_per_s"],
            ]
            for r in results
        ],
    )
    notes = [
        "rate limiting is off (`--rate-limit 0`): the default 200 requests/s per key would "
        "throttle the devices instead of the server being measured",
        "requests: pushes and pull pages in the timed window, failed ones included; latency is "
        "the real client's call (JSON and base64 both ways included)",
        "converged: every device pulled every acknowledged mutation and nothing else; gapless: "
        "latest seq = stored mutations and each device saw seqs 1..latest once",
        f"devices, server workers and PostgreSQL share the machine's {os.cpu_count()} cores",
    ]
    print("\n" + "\n".join(f"- {note}" for note in notes))
    bad = [r for r in results if r["errors"] or not r["converged"] or not r["gapless"]]
    for r in bad:
        print(
            f"- {r['backend']} with {r['workers']} worker(s): {r['errors']} errors "
            f"{r['errors_by_cause']}, converged {r['converged']}, gapless {r['gapless']}"
        )
    write_results(
        "bench_load",
        {**vars(args), "json": str(args.json)},
        {
            "notes": notes,
            "machine": {"cpu_count": os.cpu_count()},
            "uncommitted_src": uncommitted_src(),
            "results": results,
            "peak_rss_mib": peak_rss_mib(),
        },
        args.json,
    )
    if bad:
        raise SystemExit("errors or divergence: see above")


def scale_main(args: argparse.Namespace, backends: list[str]) -> None:
    """``--scale``: each backend in turn, then (on PostgreSQL) wake-ups across two hosts."""
    args.devices = 1000 if args.devices is None else args.devices
    args.seconds = 300.0 if args.seconds is None else args.seconds
    (args.workers,) = [2] if args.workers is None else args.workers
    if args.warmup >= args.idle_seconds:
        raise SystemExit("--warmup must be shorter than --idle-seconds")
    if args.devices % args.workspaces or args.active % args.workspaces:
        raise SystemExit("--devices and --active must be multiples of --workspaces")
    if args.json == RESULTS / "bench_load.json":
        args.json = RESULTS / "bench_load_scale.json"
    results = []
    hosts = None
    CACHE.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp_name:
        tmp = Path(tmp_name)
        postgres = embedded_postgres(tmp) if "postgres" in backends else nullcontext(None)
        with postgres as new_database:
            for backend in backends:
                db = new_database() if backend == "postgres" and new_database else None
                results.append(load_scale.one_backend(backend, tmp, db, args))
                log(f"  {json.dumps({k: v for k, v in results[-1].items() if k != 'rss_samples'})}")
            if new_database is not None:
                log(f"postgres: {args.trials} wake-ups across two server processes")
                hosts = load_scale.wake_ups_across_hosts(tmp, new_database(), args.trials)
    load_scale.report(results, hosts)
    write_results(
        "bench_load_scale",
        {**vars(args), "json": str(args.json)},
        {
            "machine": {"cpu_count": os.cpu_count()},
            "uncommitted_src": uncommitted_src(),
            "results": results,
            "wake_ups_across_hosts": hosts,
        },
        args.json,
    )
    bad = [r for r in results if r["errors"] or not r["converged"] or not r["gapless"]]
    if bad:
        raise SystemExit("errors or divergence: see above")


if __name__ == "__main__":
    main()
