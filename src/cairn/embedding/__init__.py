"""Turning text into vectors: the ``Embedder`` interface and the local ONNX implementation."""

from cairn.embedding.base import Embedder
from cairn.embedding.onnx import OnnxEmbedder

__all__ = ["Embedder", "OnnxEmbedder"]
