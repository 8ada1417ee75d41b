"""Vector index choice: exact numpy brute force vs Cairn's inverted lists vs usearch HNSW.

Exact search is what ``cairn.search.vector_index`` does: one float32 matrix-vector product, then
a partial sort. It is timed with one BLAS thread (as the Store pins it) and with every core, and
for a project-filtered subset both by gathering the subset's rows (what VectorIndex does) and by
scoring every row and then taking the subset's scores. usearch HNSW, when importable (it is not a
Cairn dependency: ``pip install usearch``), is timed for build, query and recall@10 against the
exact answer. Data is random unit vectors (the worst case for HNSW) and, with ``--real``, the
real embeddings of a cached store with real query embeddings.

sqlite-vec is not measured: Python's stdlib sqlite3 here is built without extension loading.

HNSW is built up to --hnsw-max vectors (default 100k): over 1M random vectors the build had not
finished after 33 minutes on 2 cores.

.venv/bin/python bench/bench_vector.py [--sizes 10000 100000] [--real 100000] [--saved STORE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# usearch (2.26) loaded before onnxruntime (1.31) makes the latter segfault on import; load
# onnxruntime first, and usearch only when HNSW is measured.
import onnxruntime  # noqa: F401
from threadpoolctl import threadpool_limits

import corpus
from common import (
    cached_store,
    log,
    new_embedder,
    peak_rss_mib,
    print_table,
    stats_ms,
    write_results,
)

DIM = 384
K = 10
DEPTH = 50  # what hybrid recall asks the vector side for
FILTER_SHARE = 0.27  # the biggest project's share in the corpus


def unit_rows(rng: np.random.Generator, n: int, chunk: int = 100_000) -> np.ndarray:
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), DIM), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + block.shape[0]] = block
    return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores, best first (VectorIndex.search's selection)."""
    k = min(k, scores.size)
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top], kind="stable")]


def per_query(fn: Callable[[np.ndarray], object], queries: np.ndarray) -> list[float]:
    for q in queries[:10]:  # warm-up
        fn(q)
    out = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        out.append(time.perf_counter() - t)
    return out


def exact(matrix: np.ndarray, queries: np.ndarray, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    subset = np.sort(rng.choice(len(matrix), int(len(matrix) * FILTER_SHARE), replace=False))
    result: dict[str, Any] = {"matrix_mib": round(matrix.nbytes / 2**20, 1)}
    for threads in (1, os.cpu_count() or 1):
        with threadpool_limits(limits=threads, user_api="blas"):
            result[f"full_{threads}t"] = stats_ms(
                per_query(lambda q: top_k(matrix @ q, DEPTH), queries)
            )
    with threadpool_limits(limits=1, user_api="blas"):
        result["filtered_gather_1t"] = stats_ms(
            per_query(lambda q: top_k(matrix[subset] @ q, DEPTH), queries)
        )
        result["filtered_score_all_1t"] = stats_ms(
            per_query(lambda q: top_k((matrix @ q)[subset], DEPTH), queries)
        )
    return result


def hnsw(
    matrix: np.ndarray, queries: np.ndarray, truth: list[set[int]], args: argparse.Namespace
) -> dict[str, Any]:
    from usearch.index import Index

    index = Index(
        ndim=DIM,
        metric="cos",
        dtype=args.hnsw_dtype,
        connectivity=args.connectivity,
        expansion_add=args.expansion_add,
        expansion_search=args.expansion_search,
    )
    start = time.perf_counter()
    index.add(np.arange(len(matrix), dtype=np.uint64), matrix, threads=args.build_threads)
    build_s = time.perf_counter() - start
    latencies = stats_ms(per_query(lambda q: index.search(q, K, threads=1), queries))
    hits = 0
    for q, want in zip(queries, truth, strict=True):
        got = {int(key) for key in index.search(q, K, threads=1).keys}
        hits += len(got & want)
    return {
        "build_s": round(build_s, 2),
        "build_threads": args.build_threads,
        "query": latencies,
        "recall_at_10": round(hits / (K * len(queries)), 4),
        "memory_mib": round(index.memory_usage / 2**20, 1),
    }


def inverted_lists(
    matrix: np.ndarray, queries: np.ndarray, truth: list[set[int]], probes: list[float]
) -> list[dict[str, Any]]:
    """Cairn's own approximate index (``cairn.search.ivf``, what a store of 20k+ vectors
    searches), built as the store builds it, at each share of lists probed."""
    from cairn.search import ivf

    rows = ivf.IvfRows(DIM)
    keys = list(range(len(matrix)))
    start = time.perf_counter()
    rows.load(len(matrix), lambda: iter([(keys, matrix, [0] * len(keys))]))
    return probed(rows, queries, truth, probes, time.perf_counter() - start)


def probed(
    rows: Any, queries: np.ndarray, truth: list[set[int]], probes: list[float], build_s: float
) -> list[dict[str, Any]]:
    """``rows`` (an ``IvfRows``) timed at each share of lists probed, and at Cairn's default
    (``PROBE`` lists), with the overlap of each top 10 with ``truth`` (keys)."""
    from cairn.search import ivf

    results = []
    for share in [None, *probes]:
        latencies = stats_ms(per_query(lambda q, p=share: rows.search(q, K, share=p), queries))
        hits = sum(
            len({key for key, _ in rows.search(q, K, share=share)} & want)
            for q, want in zip(queries, truth, strict=True)
        )
        results.append(
            {
                "lists": ivf.list_count(len(rows)),
                "probe": f"{ivf.PROBE} lists (default)" if share is None else f"{share:.0%}",
                "build_s": round(build_s, 2),
                "query": latencies,
                "recall_at_10": round(hits / (K * len(queries)), 4),
            }
        )
    return results


def saved_lists(store: Path, source: int, n_queries: int, probes: list[float]) -> dict[str, Any]:
    """The inverted lists a store saved beside itself (``<store>.vectors/``, e.g. the 1M store
    of bench_million.py, whose build takes minutes), against exact search over the vectors
    they hold, for real queries of the ``source`` memories the store was made from."""
    from cairn.search import ivf

    folder = store.with_name(store.name + ".vectors")
    meta = json.loads((folder / "meta.json").read_text())
    rows = ivf.IvfRows.read(folder, DIM, int(meta["trained_on"]))
    keys, matrix = rows.sample(len(rows), 0)
    queries = new_embedder().embed([i.query for i in corpus.query_sample(source, n_queries)])
    log(f"saved lists of {store.name}: exact search over {len(matrix):,} x {DIM}")
    truth = [set(keys[top_k(matrix @ q, K)].tolist()) for q in queries]
    del matrix
    return {
        "data": f"saved {store.name}",
        "n": len(rows),
        "ivf": probed(rows, queries, truth, probes, 0.0),
    }


def real_vectors(n: int, n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """The stored embeddings of the cached n-memory store, and real query embeddings."""
    with sqlite3.connect(cached_store(n)) as conn:
        blob = b"".join(r[0] for r in conn.execute("SELECT vector FROM memory_vectors"))
    matrix = np.frombuffer(blob, dtype="<f4").reshape(-1, DIM).copy()
    queries = [i.query for i in corpus.query_sample(n, n_queries)]
    return matrix, new_embedder().embed(queries)


def run(
    label: str, matrix: np.ndarray, queries: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    log(f"{label}: exact search over {len(matrix):,} x {DIM}")
    result: dict[str, Any] = {"data": label, "n": len(matrix), "exact": exact(matrix, queries, 1)}
    truth = [set(top_k(matrix @ q, K).tolist()) for q in queries]
    if len(matrix) <= args.ivf_max:
        log(f"{label}: Cairn's inverted lists over {len(matrix):,}")
        result["ivf"] = inverted_lists(matrix, queries, truth, args.probes)
    if importlib.util.find_spec("usearch") and not args.no_hnsw and len(matrix) <= args.hnsw_max:
        log(f"{label}: usearch HNSW build over {len(matrix):,}")
        result["hnsw"] = hnsw(matrix, queries, truth, args)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument(
        "--real", type=int, default=100_000, help="cached store size for real vectors; 0: skip"
    )
    parser.add_argument(
        "--probes", type=float, nargs="+", default=[0.05, 0.08, 0.15], help="shares of lists"
    )
    parser.add_argument(
        "--ivf-max", type=int, default=1_000_000, help="build the lists only up to this size"
    )
    parser.add_argument("--no-hnsw", action="store_true", help="skip usearch even if installed")
    parser.add_argument(
        "--saved", type=Path, help="also time a store's saved lists (<store>.vectors/)"
    )
    parser.add_argument(
        "--saved-source", type=int, default=10_000, help="the real memories --saved was made of"
    )
    parser.add_argument(
        "--hnsw-max", type=int, default=100_000, help="build HNSW only up to this many vectors"
    )
    parser.add_argument("--connectivity", type=int, default=16)
    parser.add_argument("--expansion-add", type=int, default=128)
    parser.add_argument("--expansion-search", type=int, default=64)
    parser.add_argument("--hnsw-dtype", default="f32", choices=["f32", "f16", "i8"])
    parser.add_argument("--build-threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    runs = []
    for n in args.sizes:
        runs.append(run("random", unit_rows(rng, n), unit_rows(rng, args.queries), args))
    if args.real:
        matrix, queries = real_vectors(args.real, args.queries)
        runs.append(run("real MiniLM", matrix, queries, args))
    if args.saved:
        runs.append(saved_lists(args.saved, args.saved_source, args.queries, args.probes))

    print_table(
        "Exact brute force (numpy float32 matrix @ query, top 50), p50 / p95 ms",
        [
            "data",
            "vectors",
            "matrix MiB",
            "1 BLAS thread",
            f"{os.cpu_count()} BLAS threads",
            f"filtered {FILTER_SHARE:.0%}: gather rows",
            f"filtered {FILTER_SHARE:.0%}: score all",
        ],
        [
            [
                r["data"],
                r["n"],
                r["exact"]["matrix_mib"],
                *(
                    f"{r['exact'][key]['p50_ms']} / {r['exact'][key]['p95_ms']}"
                    for key in (
                        "full_1t",
                        f"full_{os.cpu_count()}t",
                        "filtered_gather_1t",
                        "filtered_score_all_1t",
                    )
                ),
            ]
            for r in runs
            if "exact" in r
        ],
    )
    print_table(
        "Cairn's inverted lists (faiss IVF, float16; cairn.search.ivf), 1 query thread",
        ["data", "vectors", "lists", "probed", "build s", "p50 ms", "p95 ms", "recall@10"],
        [
            [
                r["data"],
                r["n"],
                i["lists"],
                i["probe"],
                i["build_s"],
                i["query"]["p50_ms"],
                i["query"]["p95_ms"],
                i["recall_at_10"],
            ]
            for r in runs
            for i in r.get("ivf", [])
        ],
    )
    with_hnsw = [r for r in runs if "hnsw" in r]
    if with_hnsw:
        print_table(
            f"usearch HNSW ({args.hnsw_dtype}, M={args.connectivity}, ef_add="
            f"{args.expansion_add}, ef_search={args.expansion_search}), 1 query thread",
            ["data", "vectors", "build s", "p50 ms", "p95 ms", "recall@10", "index MiB"],
            [
                [
                    r["data"],
                    r["n"],
                    r["hnsw"]["build_s"],
                    r["hnsw"]["query"]["p50_ms"],
                    r["hnsw"]["query"]["p95_ms"],
                    r["hnsw"]["recall_at_10"],
                    r["hnsw"]["memory_mib"],
                ]
                for r in with_hnsw
            ],
        )
    else:
        print("\nusearch is not installed (or --no-hnsw): HNSW not measured.")
    print("\nsqlite-vec: not measured; stdlib sqlite3 here cannot load extensions.")
    results = {"runs": runs, "peak_rss_mib": peak_rss_mib()}
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_results("bench_vector", settings, results)


if __name__ == "__main__":
    main()
