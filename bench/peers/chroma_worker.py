"""ChromaDB's side of ``bench_peers.py``: runs inside the peers' own virtual environment.

Reads the corpus the parent wrote (``vectors.npy``, ``job.json``), loads the vectors into a
persistent ChromaDB collection (HNSW, cosine), then answers the same queries the parent timed for
Cairn: each query is embedded by the same model (Cairn's own ONNX embedder, imported from the
source tree given on ``PYTHONPATH``) and searched for its top 10, taking turns with the model
alone. Prints one JSON object.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
from chromadb.config import Settings

from cairn.embedding.onnx import OnnxEmbedder


def stats_ms(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {
        "n": int(ms.size),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "mean_ms": round(float(ms.mean()), 3),
    }


def main(folder: Path) -> dict[str, Any]:
    job = json.loads((folder / "job.json").read_text())
    vectors = np.load(folder / "vectors.npy")
    ids = list(job["ids"])
    embedder = OnnxEmbedder()
    embedder.load()
    with tempfile.TemporaryDirectory(prefix="cairn-bench-chroma-") as data:
        client = chromadb.PersistentClient(path=data, settings=Settings(anonymized_telemetry=False))
        collection = client.create_collection("bench", metadata={"hnsw:space": "cosine"})
        batch = min(client.get_max_batch_size(), 5000)
        start = time.perf_counter()
        for at in range(0, len(ids), batch):
            collection.add(ids=ids[at : at + batch], embeddings=vectors[at : at + batch])
        ingest_s = time.perf_counter() - start

        def search(text: str) -> list[int]:
            vector = embedder.embed([text])[0]
            found = collection.query(query_embeddings=[vector], n_results=10, include=[])
            return list(found["ids"][0])

        for text in job["queries"][: job["warmup"]]:
            search(text)
        # The model alone takes turns with ChromaDB here too: this process's load may differ
        # from the parent's, and the difference between the two is what ChromaDB adds.
        times: dict[str, list[float]] = {"model": [], "chroma": []}
        answers = []
        for text in job["queries"]:
            t = time.perf_counter()
            embedder.embed([text])
            times["model"].append(time.perf_counter() - t)
            t = time.perf_counter()
            answers.append(search(text))
            times["chroma"].append(time.perf_counter() - t)

        remember: dict[str, list[float]] = {"model": [], "chroma": []}
        for n, text in enumerate(job["fresh"]):
            t = time.perf_counter()
            embedder.embed([text])
            remember["model"].append(time.perf_counter() - t)
            t = time.perf_counter()
            vector = embedder.embed([text])[0]
            collection.add(ids=[f"new-{n}"], embeddings=[vector], documents=[text])
            remember["chroma"].append(time.perf_counter() - t)
    return {
        "chromadb": chromadb.__version__,
        "ingest_per_s": round(len(ids) / ingest_s, 1),
        "recall": stats_ms(times["chroma"]),
        "remember": stats_ms(remember["chroma"]),
        "model_recall": stats_ms(times["model"]),
        "model_remember": stats_ms(remember["model"]),
        "answers": answers,
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
