"""What only the object-storage remote promises (the shared contract is test_conformance.py):
what a bucket learns, and objects in it that are not Cairn's or are damaged."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import obstore
import pytest
from obstore.store import LocalStore

from cairn.crypto.frames import Frames
from cairn.errors import SchemaTooNew
from cairn.remotes.objects import ObjectRemote

from .test_conformance import mutation, pull_all


@pytest.fixture(params=["folder", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "folder":
        yield LocalStore(tmp_path / "remote", mkdir=True)
    else:
        yield request.getfixturevalue("s3_server").bucket()


def objects(store: Any) -> dict[str, bytes]:
    return {
        str(item["path"]): bytes(obstore.get(store, item["path"]).bytes())
        for item in obstore.list(store).collect()
    }


def test_the_bucket_learns_object_names_and_sizes_only(store: Any) -> None:
    remote = ObjectRemote(store, "s3://bucket", frames=Frames(os.urandom(32)))
    remote.register_device("dev-a", "alices-laptop")
    remote.push([mutation(n, scope="abcdef12") for n in range(5)])
    stored = objects(store)
    assert sorted(stored) == ["cairn.json", "devices/dev-a", "log/dev-a/000000000001"]
    every_byte = b"".join(stored.values())
    for secret in (b"m-00003", b"alices-laptop", b"abcdef12", b"1700000000003", b"e-3"):
        assert secret not in every_byte


def test_damaged_and_foreign_objects_are_skipped_and_reported(store: Any) -> None:
    key = os.urandom(32)
    remote = ObjectRemote(store, "s3://bucket", frames=Frames(key))
    for start in (0, 3, 6):
        remote.push([mutation(n) for n in range(start, start + 3)])
    second = bytes(obstore.get(store, "log/dev-a/000000000002").bytes())
    obstore.put(store, "log/dev-a/000000000002", second[:-10])  # truncated
    obstore.put(store, "log/dev-a/000000000004", b"not a batch")  # foreign
    obstore.put(store, "log/dev-a/notes.txt", b"someone's file")  # not a batch name at all
    reader = ObjectRemote(store, "s3://bucket", frames=Frames(key))
    ids = [m.mutation_id for m in pull_all(reader)]
    assert ids == ["m-00000", "m-00001", "m-00002", "m-00006", "m-00007", "m-00008"]
    skipped = reader.status()["skipped_objects"]
    assert set(skipped) == {"log/dev-a/000000000002", "log/dev-a/000000000004"}
    # Another workspace's key opens nothing, and applies nothing.
    stranger = ObjectRemote(store, "s3://bucket", frames=Frames(os.urandom(32)))
    assert pull_all(stranger) == []
    assert len(stranger.status()["skipped_objects"]) == 4


def test_a_newer_format_is_refused_not_misread(store: Any) -> None:
    obstore.put(store, "cairn.json", b'{"format": 99}')
    remote = ObjectRemote(store, "s3://bucket", frames=Frames(os.urandom(32)))
    with pytest.raises(SchemaTooNew):
        remote.push([mutation(1)])
    assert [str(i["path"]) for i in obstore.list(store).collect()] == ["cairn.json"]
