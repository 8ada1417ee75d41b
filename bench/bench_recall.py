"""Recall latency at 10k and 100k memories, split into its parts, plus open time and peak RSS.

Each store size runs in a fresh worker process, so "open + first recall" is a real cold start of
the Store (model load, vector index load) and peak RSS belongs to that size alone. Latencies are
measured after a warm-up over a few hundred distinct paraphrase queries, without and with a
project filter (each query filtered on its target memory's project).

    .venv/bin/python bench/bench_recall.py [--sizes 10000 100000] [--queries 300] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

import corpus
from cairn.embedding.onnx import OnnxEmbedder
from cairn.model import Filters
from cairn.search import hybrid
from cairn.search.vector_index import VectorIndex
from cairn.store import search_queries
from common import (
    cached_store,
    log,
    open_store,
    peak_rss_mib,
    print_table,
    stats_ms,
    write_results,
)

LIMIT = 10
DEPTH = max(LIMIT * 4, 50)  # what hybrid.recall asks each side for
WARMUP = 30


def worker(size: int, n_queries: int, profile: bool) -> dict[str, Any]:
    path = cached_store(size)
    sample = corpus.query_sample(size, n_queries)
    queries = [i.query for i in sample]
    projects = [Filters(project=i.project) for i in sample]
    targets = [i.content for i in sample]

    start = time.perf_counter()
    store = open_store(path, OnnxEmbedder())  # nothing loaded yet: the model loads lazily
    opened = time.perf_counter()
    first_hits = store.recall(queries[0])
    first_recall = time.perf_counter()
    assert first_hits, "the first recall found nothing"
    cold = {
        "open_ms": round((opened - start) * 1000, 1),
        "first_recall_ms": round((first_recall - opened) * 1000, 1),
        "open_plus_first_recall_ms": round((first_recall - start) * 1000, 1),
    }
    model_load = []
    for _ in range(3):
        embedder = OnnxEmbedder()
        t = time.perf_counter()
        embedder.load()
        model_load.append(time.perf_counter() - t)
    index_load = []
    for _ in range(3):
        index = VectorIndex(store.db, store.embedder.model_id, store.embedder.dim)
        t = time.perf_counter()
        index.refresh()
        index_load.append(time.perf_counter() - t)
    cold["model_load_ms"] = round(float(np.median(model_load)) * 1000, 1)
    cold["index_load_ms"] = round(float(np.median(index_load)) * 1000, 1)
    cold["indexed_vectors"] = len(index)
    del index

    for q in queries[:WARMUP]:
        store.recall(q)
        store.recall(q, projects[0])

    vectors = []
    embed_s = []
    for q in queries:
        t = time.perf_counter()
        vectors.append(store.embedder.embed([q])[0])
        embed_s.append(time.perf_counter() - t)

    db, idx = store.db, store.index
    pool = ThreadPoolExecutor(max_workers=2)  # as Store uses, for the keyword half
    parts: dict[str, dict[str, float]] = {"query embedding": stats_ms(embed_s)}

    def each(fn: Callable[[int], object]) -> list[float]:
        out = []
        for i in range(len(queries)):
            t = time.perf_counter()
            fn(i)
            out.append(time.perf_counter() - t)
        return out

    def filter_rowids(i: int) -> np.ndarray:
        with db.read() as conn:
            return search_queries.filtered_rowids(conn, projects[i])

    allowed = [filter_rowids(i) for i in range(len(queries))]
    terms = [[" ".join(t) for t in hybrid.query_terms(q)] for q in queries]
    every_term = [hybrid.fts_query(q) or '""' for q in queries]  # the shape before issue 21

    def keyword(i: int, filters: Filters) -> list[tuple[int, float]]:
        return hybrid.keyword_ranked(db, terms[i], filters, DEPTH)

    def keyword_every_term(i: int) -> list[tuple[int, float]]:
        with db.read() as conn:
            return search_queries.keyword_search(conn, every_term[i], Filters(), DEPTH)

    parts["index refresh (no change)"] = stats_ms(each(lambda i: idx.refresh()))
    parts["vector search"] = stats_ms(each(lambda i: idx.search(vectors[i], DEPTH)))
    parts["keyword search"] = stats_ms(each(lambda i: keyword(i, Filters())))
    parts["keyword search, every term (old shape)"] = stats_ms(each(keyword_every_term))
    parts["hybrid, no embedding"] = stats_ms(
        each(
            lambda i: hybrid.recall(
                db, idx, lambda _q: vectors[i], queries[i], Filters(), LIMIT, pool
            )
        )
    )
    parts["full recall"] = stats_ms(each(lambda i: store.recall(queries[i], limit=LIMIT)))
    parts["project filter rowids (SQL)"] = stats_ms(each(filter_rowids))
    parts["vector search, filtered"] = stats_ms(
        each(lambda i: idx.search(vectors[i], DEPTH, allowed[i]))
    )
    parts["keyword search, filtered"] = stats_ms(each(lambda i: keyword(i, projects[i])))
    parts["hybrid, no embedding, filtered"] = stats_ms(
        each(
            lambda i: hybrid.recall(
                db, idx, lambda _q: vectors[i], queries[i], projects[i], LIMIT, pool
            )
        )
    )
    parts["full recall, filtered"] = stats_ms(
        each(lambda i: store.recall(queries[i], projects[i], LIMIT))
    )

    found = sum(
        targets[i] in {h.memory.content for h in store.recall(queries[i], limit=LIMIT)}
        for i in range(len(queries))
    )
    with db.read() as conn:
        fts_rows = [
            conn.execute(
                "SELECT count(*) FROM memories_fts WHERE memories_fts MATCH ?", (m,)
            ).fetchone()[0]
            for m in every_term
        ]
    no_keyword = sum(not keyword(i, Filters()) for i in range(len(queries)))
    result: dict[str, Any] = {
        "size": size,
        "live_memories": store.count(),
        "queries": len(queries),
        "cold": cold,
        "parts": parts,
        "hit_at_10": round(found / len(queries), 3),
        "fts_matched_rows_every_term": {
            "mean": round(float(np.mean(fts_rows)), 1),
            "p50": float(np.percentile(fts_rows, 50)),
            "max": int(max(fts_rows)),
        },
        "queries_without_keyword_hits": no_keyword,
    }
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for i in range(len(queries)):
            store.recall(queries[i], projects[i], LIMIT)
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
        result["profile_filtered_tottime"] = text.getvalue()
    pool.shutdown()
    store.close()
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=300, help="distinct queries per size")
    parser.add_argument("--profile", action="store_true", help="cProfile filtered recalls")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.queries, args.profile)))
        return

    runs = []
    for size in args.sizes:
        cached_store(size)  # build outside the timed worker
        log(f"recall on {size:,} memories ({args.queries} queries)")
        command = [sys.executable, str(Path(__file__)), "--worker", str(size)]
        command += ["--queries", str(args.queries)] + (["--profile"] if args.profile else [])
        done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))

    names = list(runs[0]["parts"])
    print_table(
        "Recall latency, p50 / p95 ms (limit 10; each side fetches 50 candidates)",
        ["part", *(f"{r['size']:,} memories" for r in runs)],
        [
            [name, *(f"{r['parts'][name]['p50_ms']} / {r['parts'][name]['p95_ms']}" for r in runs)]
            for name in names
        ],
    )
    print_table(
        "Cold start in a fresh process, memory, and sanity",
        ["", *(f"{r['size']:,} memories" for r in runs)],
        [
            ["open store (ms)", *(r["cold"]["open_ms"] for r in runs)],
            [
                "first recall (model + index load) (ms)",
                *(r["cold"]["first_recall_ms"] for r in runs),
            ],
            ["  model load alone (ms)", *(r["cold"]["model_load_ms"] for r in runs)],
            ["  vector index load alone (ms)", *(r["cold"]["index_load_ms"] for r in runs)],
            ["peak RSS (MiB)", *(r["peak_rss_mib"] for r in runs)],
            ["hit@10 of the paraphrased memory", *(r["hit_at_10"] for r in runs)],
            [
                "FTS rows matching every term OR-ed (old shape, mean)",
                *(r["fts_matched_rows_every_term"]["mean"] for r in runs),
            ],
            [
                "queries with no keyword hits (common words only)",
                *(r["queries_without_keyword_hits"] for r in runs),
            ],
        ],
    )
    for r in runs:
        if "profile_filtered_tottime" in r:
            log(f"profile of filtered recall at {r['size']:,}:\n{r['profile_filtered_tottime']}")
    write_results("bench_recall", vars(args), {"runs": runs})


if __name__ == "__main__":
    main()
