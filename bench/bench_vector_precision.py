"""Vector precision: does search change when stored vectors are rounded to float16 (as sent)?

The cached N-memory store holds the real model's float32 vectors (as every store made before
payload format 2 does). For a sample of the corpus's queries, embedded by the same model, this
compares exact cosine search over those vectors with search over the same vectors rounded to
float16 (``cairn.vector_bytes.stored``, what a device now keeps and sends): the largest change of
any query-memory cosine, how many of each query's top 10 stay the same, and hit@10 (the memory
the query was written for is among the top 10) both ways. Counts, not timings: the machine's
load does not change them.

    .venv/bin/python bench/bench_vector_precision.py [--size 10000] [--queries 500] [--json PATH]
"""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

import numpy as np

import corpus
from cairn import vector_bytes
from common import cached_store, new_embedder, print_table, write_results

TOP = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10_000, help="corpus size (items)")
    parser.add_argument("--queries", type=int, default=500, help="queries to compare")
    parser.add_argument("--json", type=Path, default=None, help="where the results go")
    args = parser.parse_args()

    conn = sqlite3.connect(cached_store(args.size))
    rows = conn.execute(
        "SELECT m.content, v.vector FROM memories m JOIN memory_vectors v "
        "ON v.memory_rowid = m.rowid WHERE m.deleted = 0 ORDER BY m.rowid"
    ).fetchall()
    conn.close()
    position = {content: i for i, (content, _v) in enumerate(rows)}
    full = np.frombuffer(b"".join(v for _c, v in rows), dtype="<f4").reshape(len(rows), -1)
    half = np.frombuffer(b"".join(vector_bytes.stored(row) for row in full), dtype="<f4").reshape(
        full.shape
    )

    sample = corpus.query_sample(args.size, args.queries)
    queries = new_embedder().embed([item.query for item in sample])
    exact, rounded = queries @ full.T, queries @ half.T
    top_exact = np.argsort(-exact, axis=1)[:, :TOP]
    top_rounded = np.argsort(-rounded, axis=1)[:, :TOP]
    same = [len(set(a) & set(b)) for a, b in zip(top_exact, top_rounded, strict=True)]
    wanted = [position.get(item.content, -1) for item in sample]
    hits_exact = sum(w in row for w, row in zip(wanted, top_exact, strict=True))
    hits_rounded = sum(w in row for w, row in zip(wanted, top_rounded, strict=True))
    result = {
        "memories": len(rows),
        "queries": len(sample),
        "max_abs_value_change": float(np.abs(half - full).max()),
        "max_abs_cosine_change": float(np.abs(rounded - exact).max()),
        "top10_kept_of_10_mean": round(float(np.mean(same)), 4),
        "queries_with_the_same_top10_set": sum(s == TOP for s in same),
        "queries_with_the_same_top10_order": int((top_exact == top_rounded).all(axis=1).sum()),
        "hit_at_10_float32": hits_exact,
        "hit_at_10_float16": hits_rounded,
    }
    print_table(
        f"Exact cosine search, float32 vs float16-rounded vectors ({len(rows):,} memories)",
        [
            "queries",
            "largest cosine change",
            "top-10 kept (mean of 10)",
            "same top-10 set / order",
            "hit@10 float32 / float16",
        ],
        [
            [
                result["queries"],
                f"{result['max_abs_cosine_change']:.2e}",
                f"{result['top10_kept_of_10_mean']:.4f}",
                f"{result['queries_with_the_same_top10_set']} / "
                f"{result['queries_with_the_same_top10_order']}",
                f"{hits_exact} / {hits_rounded}",
            ]
        ],
    )
    write_results(
        "bench_vector_precision",
        {k: v for k, v in vars(args).items() if k != "json"},
        {"results": result},
        args.json,
    )


if __name__ == "__main__":
    main()
