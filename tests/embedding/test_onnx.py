"""The local ONNX embedder: real model, real vectors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cairn.embedding.onnx import BUNDLED_MODEL_ID, OnnxEmbedder, bundled_model_files
from cairn.errors import ModelNotFound


def test_vectors_are_unit_length_and_batch_independent(embedder: OnnxEmbedder) -> None:
    texts = ["short", "a much longer sentence about database connection pools and timeouts", "x"]
    batch = embedder.embed(texts)
    assert batch.shape == (3, 384) and batch.dtype == np.float32
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    one_by_one = np.vstack([embedder.embed([t]) for t in texts])
    assert np.allclose(batch, one_by_one, atol=1e-4)  # padding does not leak into the mean
    assert embedder.embed([]).shape == (0, 384)


def test_meaning_is_captured(embedder: OnnxEmbedder) -> None:
    a, b, c = embedder.embed(
        ["How do I reset my password?", "I forgot my login credentials", "The cat sat on the mat"]
    )
    assert float(a @ b) > float(a @ c) + 0.2


def test_long_text_is_truncated_not_rejected(embedder: OnnxEmbedder) -> None:
    vector = embedder.embed(["word " * 5000])
    assert vector.shape == (1, 384)


def test_counts_texts_embedded(embedder: OnnxEmbedder) -> None:
    before = embedder.texts_embedded
    embedder.embed(["one", "two"])
    assert embedder.texts_embedded == before + 2


def test_bundled_model_id(embedder: OnnxEmbedder) -> None:
    assert embedder.model_id == BUNDLED_MODEL_ID


def test_model_dir_points_at_another_model(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    model, tokenizer = bundled_model_files()
    folder = tmp_path / "my-encoder"
    folder.mkdir()
    shutil.copy(model, folder / "model.onnx")
    shutil.copy(tokenizer, folder / "tokenizer.json")
    custom = OnnxEmbedder(folder)
    assert custom.model_id.startswith("my-encoder-") and custom.model_id != embedder.model_id
    same = custom.embed(["identical weights give identical vectors"])
    assert np.allclose(same, embedder.embed(["identical weights give identical vectors"]))


def test_missing_model_files_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound) as info:
        OnnxEmbedder(tmp_path)
    assert "model.onnx" in info.value.message and "model_dir" in info.value.message
    (tmp_path / "model.onnx").write_bytes(b"not an onnx file")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelNotFound) as info2:
        OnnxEmbedder(tmp_path).embed(["x"])
    assert "cannot load the embedding model" in info2.value.message
