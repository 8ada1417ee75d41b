"""Shared fixtures: one real embedder per test session, a fresh store file per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from cairn.embedding.onnx import OnnxEmbedder
from cairn.service import Store
from cairn.store.db import Database

# Property tests print the blob that replays a failure; CI runs them derandomized (seeded).
settings.register_profile("dev", print_blob=True)
settings.register_profile("ci", print_blob=True, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def embedder() -> OnnxEmbedder:
    model = OnnxEmbedder()
    model.load()
    return model


@pytest.fixture
def store(tmp_path: Path, embedder: OnnxEmbedder) -> Iterator[Store]:
    with Store(Database(tmp_path / "cairn.db"), embedder, project="test") as s:
        yield s


@pytest.fixture
def cairn_env(tmp_path: Path) -> dict[str, str]:
    """Environment for running `cairn` as a subprocess against a fresh CAIRN_HOME."""
    env = dict(os.environ)
    env["CAIRN_HOME"] = str(tmp_path / "home")
    env.pop("CAIRN_DB", None)
    return env
