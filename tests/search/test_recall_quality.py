"""Recall quality on a small hand-written corpus (tests/data/recall_corpus.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.memory_rules import NewMemory
from cairn.store.db import Database

CORPUS = json.loads((Path(__file__).parent.parent / "data" / "recall_corpus.json").read_text())


@pytest.fixture(scope="module")
def corpus_store(
    tmp_path_factory: pytest.TempPathFactory, embedder: OnnxEmbedder
) -> tuple[Store, dict[str, str]]:
    store = Store(Database(tmp_path_factory.mktemp("corpus") / "cairn.db"), embedder)
    items = [
        NewMemory(m["content"], m["kind"], m["project"], m["tags"]) for m in CORPUS["memories"]
    ]
    results = store.remember_many(items)
    keys = {r.memory.id: m["key"] for r, m in zip(results, CORPUS["memories"], strict=True)}
    return store, keys


@pytest.mark.parametrize("case", CORPUS["paraphrase_queries"], ids=lambda c: c["expect"])
def test_paraphrase_finds_the_intended_memory_in_the_top_3(
    corpus_store: tuple[Store, dict[str, str]], case: dict[str, str]
) -> None:
    store, keys = corpus_store
    top = [keys[h.memory.id] for h in store.recall(case["query"], limit=3)]
    assert case["expect"] in top, f"{case['query']!r} gave {top}"


@pytest.mark.parametrize("case", CORPUS["keyword_queries"], ids=lambda c: c["expect"])
def test_identifiers_and_error_codes_are_found_by_the_keyword_side(
    corpus_store: tuple[Store, dict[str, str]], case: dict[str, str]
) -> None:
    store, keys = corpus_store
    hits = store.recall(case["query"], limit=3)
    assert keys[hits[0].memory.id] == case["expect"]
    assert hits[0].match.keyword_rank == 1
    assert "keyword #1" in hits[0].match.explain()
