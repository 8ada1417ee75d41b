"""Hosted recall: a cloud agent's POST /v1/recall over HTTP against a hosted workspace of N
memories, on each server storage (embedded SQLite, PostgreSQL + pgvector), beside the same
queries recalled locally on a device's store.

A device pushes the cached benchmark store (memories with their vectors, as a device sends them)
into a hosted workspace through ``cairn server run``; the server folds them into its search
index; then the agent's queries (the corpus's paraphrases) are timed end to end over HTTP (query
embedding included) and checked: does the memory each query was written for come back in the
top 10, as often as on the device?

    .venv/bin/python bench/bench_hosted.py                 # 100k, both backends
    .venv/bin/python bench/bench_hosted.py --quick         # 2k, a smoke run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

import corpus
from cairn.protocol import WireMutation
from cairn.remotes.http import HttpRemote
from cairn.replication import MemoryState
from cairn.sync import payload
from common import (
    Server,
    cached_store,
    embedded_postgres,
    log,
    open_store,
    print_table,
    stats_ms,
    write_results,
)

LIMIT = 10
BATCH = 2000
WARMUP = 20


def device_mutations(path: Path) -> list[WireMutation]:
    """Every memory of the cached store as a device pushes it: its state with its vector."""
    store = open_store(path)
    try:
        wire = []
        for memory, _model_id, vector in store.iter_with_vectors(page=5000):
            state = MemoryState(memory, memory.hlc, {}, (), vector)
            wire.append(
                WireMutation(
                    f"bench-{memory.id}",
                    "bench-device",
                    memory.hlc,
                    memory.id,
                    payload.scope_tag(payload.HOSTED_SCOPE_KEY, memory.project),
                    payload.encode_memory(state),
                )
            )
        return wire
    finally:
        store.close()


def local_recall(path: Path, queries: list[str], targets: list[str]) -> dict[str, Any]:
    """The same queries on the device's own store: latency and how often the target is found."""
    store = open_store(path)
    try:
        for q in queries[:WARMUP]:
            store.recall(q, limit=LIMIT)
        times, found = [], 0
        for q, target in zip(queries, targets, strict=True):
            t = time.perf_counter()
            hits = store.recall(q, limit=LIMIT)
            times.append(time.perf_counter() - t)
            found += any(h.memory.content == target for h in hits)
        return {"recall": stats_ms(times), "hit_at_10": round(found / len(queries), 3)}
    finally:
        store.close()


def hosted_run(
    backend: str, server: Server, wire: list[WireMutation], sample: list[corpus.Item]
) -> dict[str, Any]:
    device = HttpRemote(server.url, server.key, device_id="bench-device")
    client = httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=600
    )
    start = time.perf_counter()
    for first in range(0, len(wire), BATCH):
        device.push(wire[first : first + BATCH])
    pushed = time.perf_counter()
    # Listing folds whatever the pushes' background folds left: then everything is searchable.
    total = client.get("/v1/memories", params={"limit": 1}).json()["total"]
    searchable = time.perf_counter()
    log(
        f"{backend}: pushed {len(wire):,} in {pushed - start:.1f} s, searchable after "
        f"{searchable - start:.1f} s ({total:,} live)"
    )
    cpu_after_ingest = server.cpu_seconds()
    queries = [i.query for i in sample]
    out: dict[str, Any] = {
        "backend": backend,
        "memories": total,
        "push_s": round(pushed - start, 1),
        "searchable_s": round(searchable - start, 1),
        "ingest_per_s": round(len(wire) / (searchable - start)),
    }
    # The first recall of a workspace in a server process reads its vectors into memory.
    t = time.perf_counter()
    client.post("/v1/recall", json={"query": queries[0], "limit": LIMIT})
    out["first_recall_ms"] = round((time.perf_counter() - t) * 1000, 1)
    for q in queries[1:WARMUP]:
        client.post("/v1/recall", json={"query": q, "limit": LIMIT})
    for label, project in (("all", False), ("project", True)):
        times, found = [], 0
        for item in sample:
            body: dict[str, Any] = {"query": item.query, "limit": LIMIT}
            if project:
                body["project"] = item.project
            t = time.perf_counter()
            answer = client.post("/v1/recall", json=body)
            times.append(time.perf_counter() - t)
            assert answer.status_code == 200, answer.text
            found += any(r["content"] == item.content for r in answer.json()["results"])
        out[label] = {"recall": stats_ms(times), "hit_at_10": round(found / len(sample), 3)}
    out["server_cpu_s_per_recall"] = round(
        (server.cpu_seconds() - cpu_after_ingest) / (2 * len(sample) + WARMUP), 4
    )
    usage = client.get("/v1/usage").json()
    out["recalls_metered"] = usage["days"][0]["recalls"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000, help="memories in the workspace")
    parser.add_argument("--queries", type=int, default=300, help="timed queries per case")
    parser.add_argument(
        "--backend", choices=["sqlite", "postgres", "both"], default="both", help="server storage"
    )
    parser.add_argument("--quick", action="store_true", help="2k memories, 50 queries")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    args = parser.parse_args()
    size, n_queries = (2000, 50) if args.quick else (args.size, args.queries)
    path = cached_store(size)
    sample = corpus.query_sample(size, n_queries)
    log(f"reading the {size:,}-memory store")
    wire = device_mutations(path)
    local = local_recall(path, [i.query for i in sample], [i.content for i in sample])
    log(f"local recall p50 {local['recall']['p50_ms']} ms, hit@10 {local['hit_at_10']}")
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    runs = []
    with tempfile.TemporaryDirectory(prefix="cairn-bench-hosted-") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        new_database = (
            stack.enter_context(embedded_postgres(folder)) if "postgres" in backends else None
        )
        for backend in backends:
            db = new_database() if backend == "postgres" and new_database else None
            with Server(folder / backend, mode="hosted", db=db) as server:
                runs.append(hosted_run(backend, server, wire, sample))
    rows = [
        [
            "device (local)",
            f"{size:,}",
            "",
            "",
            "",
            f"{local['recall']['p50_ms']:.1f} / {local['recall']['p95_ms']:.1f}",
            "",
            f"{local['hit_at_10']:.2f}",
            "",
        ]
    ]
    for run in runs:
        every, project = run["all"]["recall"], run["project"]["recall"]
        rows.append(
            [
                f"hosted, {run['backend']}",
                f"{run['memories']:,}",
                f"{run['searchable_s']:.0f} s",
                f"{run['first_recall_ms']:,.0f} ms",
                f"{run['ingest_per_s']:,}/s",
                f"{every['p50_ms']:.1f} / {every['p95_ms']:.1f}",
                f"{project['p50_ms']:.1f} / {project['p95_ms']:.1f}",
                f"{run['all']['hit_at_10']:.2f}",
                f"{run['project']['hit_at_10']:.2f}",
            ]
        )
    print_table(
        f"Hosted recall, {size:,} memories, {n_queries} queries, top {LIMIT}",
        [
            "where",
            "memories",
            "searchable after",
            "first recall",
            "ingest",
            "recall p50 / p95 ms",
            "with project p50 / p95 ms",
            "hit@10",
            "hit@10 (project)",
        ],
        rows,
    )
    write_results(
        "bench_hosted",
        {"size": size, "queries": n_queries, "limit": LIMIT, "backend": args.backend},
        {"local": local, "hosted": runs},
        args.json,
    )


if __name__ == "__main__":
    main()
