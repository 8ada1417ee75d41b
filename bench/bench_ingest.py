"""Write speed: single ``remember`` latency, and bulk ingest against the raw embedder.

Bulk ingest (``remember_many``, and ``jsonl.import_`` of a JSONL without embeddings) is
compared with the raw embedder on the same texts in the same run; the ratio should be >= 0.9.
Importing a JSONL with embeddings must not call the model at all.

    .venv/bin/python bench/bench_ingest.py [--bulk 2000] [--base 10000] [--singles 200]
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import corpus
from cairn.embedding.onnx import OnnxEmbedder
from cairn.interchange import jsonl
from common import (
    CACHE,
    copy_store,
    log,
    new_embedder,
    new_memories,
    open_store,
    print_table,
    stats_ms,
    write_results,
)

BULK_OFFSET = 5_000_000
SINGLE_OFFSET = 6_000_000


def bulk(n: int, embedder: OnnxEmbedder, tmp: Path) -> dict[str, Any]:
    items = corpus.items(n, start=BULK_OFFSET)
    texts = [i.content for i in items]
    embedder.embed(corpus.fresh_texts(128, offset=7_000_000))  # warm-up

    def raw() -> float:
        start = time.perf_counter()
        embedder.embed(texts)
        return time.perf_counter() - start

    raw_first = raw()

    store = open_store(tmp / "bulk.db", embedder)
    start = time.perf_counter()
    created = sum(r.created for r in store.remember_many(new_memories(items)))
    remember_many_s = time.perf_counter() - start
    out = io.StringIO()
    jsonl.export(store, out)
    store.close()
    with_vectors = out.getvalue().splitlines(keepends=True)
    without_vectors = [_strip_vector(line) for line in with_vectors]

    store = open_store(tmp / "import-text.db", embedder)
    start = time.perf_counter()
    text_report = jsonl.import_(store, without_vectors)
    import_text_s = time.perf_counter() - start
    store.close()

    store = open_store(tmp / "import-vectors.db", embedder)
    before = embedder.texts_embedded
    start = time.perf_counter()
    vector_report = jsonl.import_(store, with_vectors)
    import_vectors_s = time.perf_counter() - start
    model_calls = embedder.texts_embedded - before
    store.close()

    raw_second = raw()
    raw_s = (raw_first + raw_second) / 2
    raw_rate = n / raw_s

    def row(seconds: float) -> dict[str, float]:
        return {
            "seconds": round(seconds, 3),
            "per_s": round(n / seconds, 1),
            "ratio_to_raw": round(raw_s / seconds, 3),
        }

    return {
        "memories": n,
        "created": created,
        "raw_embed": {
            "seconds_runs": [round(raw_first, 3), round(raw_second, 3)],
            "per_s": round(raw_rate, 1),
        },
        "remember_many": row(remember_many_s),
        "import_without_embeddings": {**row(import_text_s), "report": text_report.to_dict()},
        "import_with_embeddings": {
            **row(import_vectors_s),
            "texts_embedded_during_import": model_calls,
            "report": vector_report.to_dict(),
        },
    }


def _strip_vector(line: str) -> str:
    record = json.loads(line)
    if record.get("record") != "memory":
        return line
    record.pop("embedding", None)
    record.pop("model_id", None)
    return json.dumps(record, ensure_ascii=False) + "\n"


def singles(base: int, count: int, embedder: OnnxEmbedder, tmp: Path) -> dict[str, Any]:
    store = open_store(copy_store(base, tmp / f"singles-{base}.db"), embedder)
    items = corpus.items(count + 10, start=SINGLE_OFFSET)
    embed_only = []
    for item in items[10:]:
        start = time.perf_counter()
        embedder.embed([item.content])
        embed_only.append(time.perf_counter() - start)
    first = items[0]
    start = time.perf_counter()  # the first one loads the vector index
    store.remember(first.content, first.kind, first.project, first.tags)
    first_s = time.perf_counter() - start
    for item in items[1:10]:  # warm-up
        store.remember(item.content, item.kind, item.project, item.tags)
    latencies = []
    for item in items[10:]:
        start = time.perf_counter()
        store.remember(item.content, item.kind, item.project, item.tags)
        latencies.append(time.perf_counter() - start)
    store.close()
    return {
        "base_memories": base,
        "first_remember_ms": round(first_s * 1000, 1),
        "remember": stats_ms(latencies),
        "embed_only": stats_ms(embed_only),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bulk", type=int, default=2000, help="memories to bulk-ingest")
    parser.add_argument(
        "--base", type=int, nargs="+", default=[10_000], help="store sizes for single remember"
    )
    parser.add_argument("--singles", type=int, default=200, help="single remembers to time")
    args = parser.parse_args()

    embedder = new_embedder()
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp_name:
        tmp = Path(tmp_name)
        single = []
        for base in args.base:
            log(f"single remember on a {base:,}-memory store")
            single.append(singles(base, args.singles, embedder, tmp))
        log(f"bulk ingest of {args.bulk:,} memories")
        bulk_result = bulk(args.bulk, embedder, tmp)

    print_table(
        "Single remember (embedding + near-duplicate check + one transaction)",
        ["store size", "first ms", "p50 ms", "p95 ms", "embed-only p50 ms", "embed-only p95 ms"],
        [
            [
                s["base_memories"],
                s["first_remember_ms"],
                s["remember"]["p50_ms"],
                s["remember"]["p95_ms"],
                s["embed_only"]["p50_ms"],
                s["embed_only"]["p95_ms"],
            ]
            for s in single
        ],
    )
    b = bulk_result
    print_table(
        f"Bulk ingest of {b['memories']:,} memories into an empty store",
        ["path", "seconds", "memories/s", "ratio to raw embedder (target >= 0.9)"],
        [
            [
                "raw embedder, same texts",
                b["raw_embed"]["seconds_runs"],
                b["raw_embed"]["per_s"],
                1,
            ],
            ["remember_many", *_cols(b["remember_many"])],
            ["import JSONL without embeddings", *_cols(b["import_without_embeddings"])],
            ["import JSONL with embeddings", *_cols(b["import_with_embeddings"])],
        ],
    )
    print(
        "\nmodel calls during the import with embeddings: "
        f"{b['import_with_embeddings']['texts_embedded_during_import']} texts"
    )
    write_results("bench_ingest", vars(args), {"single": single, "bulk": bulk_result})


def _cols(row: dict[str, Any]) -> list[object]:
    return [row["seconds"], row["per_s"], row["ratio_to_raw"]]


if __name__ == "__main__":
    main()
