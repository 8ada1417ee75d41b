"""The Python API: `cairn.open()` and the verbs a script uses."""

from __future__ import annotations

from pathlib import Path

import pytest

import cairn
from cairn.errors import NotFound


def test_open_defaults_to_cairn_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with cairn.open() as store:
        result = store.remember("Releases are cut from the main branch every Thursday")
        assert result.memory.project == "default"  # not inside a git repository
        assert result.memory.source == "python"
    assert (tmp_path / "home" / "cairn.db").is_file()


def test_project_defaults_to_the_git_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "billing-service"
    (repo / ".git").mkdir(parents=True)
    (repo / "src").mkdir()
    monkeypatch.chdir(repo / "src")
    with cairn.open(tmp_path / "x.db") as store:
        assert store.remember("Invoices are numbered per year").memory.project == "billing-service"


def test_verbs(tmp_path: Path) -> None:
    with cairn.open(tmp_path / "api.db", project="demo") as store:
        made = store.remember("The docs site is built with MkDocs", kind="fact", tags=["docs"])
        assert store.get(made.memory.id).content == "The docs site is built with MkDocs"
        assert store.get(made.memory.id[:13]).id == made.memory.id  # unique prefix
        assert store.recall("documentation generator")[0].memory.id == made.memory.id
        assert [m.id for m in store.list(cairn.Filters(tags=("docs",)))] == [made.memory.id]
        store.forget(made.memory.id)
        assert store.list() == []
        with pytest.raises(NotFound):
            store.get(made.memory.id)
