"""Raw embedder throughput (sentences/s) by batch size, and single short-query latency.

.venv/bin/python bench/bench_embed.py [--texts 2000] [--batch-sizes 16 32 64] [--queries 300]
"""

from __future__ import annotations

import argparse
import statistics
import time

from threadpoolctl import threadpool_limits
from tokenizers import Tokenizer

import corpus
from cairn.embedding.onnx import bundled_model_files
from common import log, new_embedder, print_table, stats_ms, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2000, help="memory texts to embed")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--queries", type=int, default=300, help="single queries to time")
    args = parser.parse_args()
    threadpool_limits(limits=1, user_api="blas")  # as the Store does

    texts = [i.content for i in corpus.items(args.texts)]
    queries = [i.query for i in corpus.query_sample(args.texts, args.queries)]
    words = statistics.mean(len(t.split()) for t in texts)
    tokenizer = Tokenizer.from_file(str(bundled_model_files()[1]))
    tokenizer.no_padding()
    tokenizer.enable_truncation(256)  # the embedder's max_tokens default
    tokens = statistics.mean(sum(e.attention_mask) for e in tokenizer.encode_batch(texts))
    query_tokens = statistics.mean(sum(e.attention_mask) for e in tokenizer.encode_batch(queries))
    throughput = []
    for batch_size in args.batch_sizes:
        embedder = new_embedder(batch_size)
        embedder.embed(texts[: batch_size * 4])  # warm-up
        start = time.perf_counter()
        embedder.embed(texts)
        seconds = time.perf_counter() - start
        rate = len(texts) / seconds
        log(f"batch {batch_size}: {rate:,.0f} sentences/s")
        throughput.append(
            {"batch_size": batch_size, "seconds": round(seconds, 3), "sentences_per_s": rate}
        )

    embedder = new_embedder()
    for q in queries[:30]:  # warm-up
        embedder.embed([q])
    latencies = []
    for q in queries:
        start = time.perf_counter()
        embedder.embed([q])
        latencies.append(time.perf_counter() - start)
    query = stats_ms(latencies)

    print_table(
        f"Embedder throughput: {len(texts):,} memory texts, {words:.1f} words / {tokens:.1f} "
        "tokens on average",
        ["batch size", "seconds", "sentences/s"],
        [[t["batch_size"], t["seconds"], round(t["sentences_per_s"])] for t in throughput],
    )
    print_table(
        f"Single query embedding ({len(queries)} queries, {query_tokens:.1f} tokens on average)",
        ["p50 ms", "p95 ms", "mean ms", "max ms"],
        [[query["p50_ms"], query["p95_ms"], query["mean_ms"], query["max_ms"]]],
    )
    write_results(
        "bench_embed",
        vars(args),
        {
            "mean_words": round(words, 2),
            "mean_tokens": round(tokens, 2),
            "mean_query_tokens": round(query_tokens, 2),
            "throughput": throughput,
            "query_latency": query,
        },
    )


if __name__ == "__main__":
    main()
