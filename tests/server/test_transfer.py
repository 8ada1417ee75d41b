"""A workspace moved between servers (``cairn.server.transfer``): exported from one backend,
imported into the other with its log, keyrings and devices intact, and every wrong file
refused whole."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cairn.errors import InvalidInput
from cairn.protocol import KeyringProof
from cairn.server import transfer
from cairn.server.storage import Quota, ServerStorage

from ..conftest import server_storage_for
from .test_storage import mutation

NOW = 1_700_000_000_000
WS = "ws-moving-3e9d1c"


@pytest.fixture
def servers(
    tmp_path: Path, server_backend: str, request: pytest.FixtureRequest
) -> Iterator[tuple[ServerStorage, ServerStorage]]:
    """Server A on this backend, server B on the other one."""
    other = "postgres" if server_backend == "sqlite" else "sqlite"
    a = server_storage_for(server_backend, tmp_path / "a", request)
    (tmp_path / "b").mkdir()
    b = server_storage_for(other, tmp_path / "b", request)
    yield a, b
    a.close()
    b.close()


def filled(storage: ServerStorage) -> ServerStorage:
    storage.create_workspace(WS, "moving", NOW)
    storage.set_quota(WS, Quota(10_000, None))
    storage.put_keyring(WS, b"ring-1", None)
    proof = KeyringProof(b"s" * 64, b"v" * 32, 2)
    storage.put_keyring(WS, b"ring-2", 1, revoked=[1], proof=proof)
    storage.register_device(WS, "dev-a", "laptop", NOW)
    for n in range(3):  # 3 pushes of 700: more than one page of the export and of the import
        scopes = ["0123abcd" if i % 2 else None for i in range(700)]
        batch = [mutation(n * 700 + i, "dev-a", scope) for i, scope in enumerate(scopes)]
        storage.push(WS, batch, "dev-a", NOW + n)
    storage.record_seen([], [(WS, "dev-b", NOW + 5, None)])
    return storage


def exported(storage: ServerStorage) -> list[str]:
    return list(transfer.export(storage, storage.workspace("moving"), NOW + 10))


def imported(storage: ServerStorage, lines: list[str]) -> dict[str, int]:
    return transfer.read(io.StringIO("".join(line + "\n" for line in lines)), storage, NOW, "t")[1]


def test_an_import_holds_what_the_export_read(
    servers: tuple[ServerStorage, ServerStorage],
) -> None:
    a, b = servers
    lines = exported(filled(a))
    assert json.loads(lines[0])["format"] == "cairn-workspace"
    assert "api_keys" not in "".join(lines) and "secret" not in "".join(lines)

    counts = imported(b, lines)

    assert counts == {"keyrings": 2, "devices": 2, "mutations": 2100}
    assert b.workspace("moving") == a.workspace("moving")
    assert b.pull(WS, 0, 5000, None) == a.pull(WS, 0, 5000, None)
    assert b.pull(WS, 1000, 50, ["0123abcd"]) == a.pull(WS, 1000, 50, ["0123abcd"])
    assert b.keyring_versions(WS, 10) == a.keyring_versions(WS, 10)
    assert b.devices(WS) == a.devices(WS)
    now = NOW + 20
    assert b.usage(WS, 1, now).quota == Quota(10_000, None)
    assert b.usage(WS, 1, now).stored_bytes == a.usage(WS, 1, now).stored_bytes
    assert b.keys(WS) == []
    (event,) = b.server_events(5)
    assert (event.action, event.workspace_name, event.detail["mutations"]) == (
        "workspace_imported",
        "moving",
        2100,
    )
    # The log carries on from the same seq, and a repeat of a stored mutation is a duplicate.
    result = b.push(WS, [mutation(0, "dev-a"), mutation(9999, "dev-a")], "dev-a", now)
    assert (result.stored, result.duplicates, result.last_seq) == (1, 1, 2101)


def _edit(lines: list[str], index: int, **changes: Any) -> list[str]:
    record = json.loads(lines[index])
    record.update(changes)
    return [*lines[:index], json.dumps(record), *lines[index + 1 :]]


BAD: dict[str, Callable[[list[str]], list[str]]] = {
    "cut off": lambda lines: lines[:-1],
    "cut mid-log": lambda lines: lines[:10] + lines[-1:],
    "a later format": lambda lines: _edit(lines, 0, version=2),
    "an unknown field": lambda lines: _edit(lines, 0, extra=1),
    "a bad workspace name": lambda lines: _edit(
        lines, 0, workspace={**json.loads(lines[0])["workspace"], "name": "no spaces"}
    ),
    "a seq going back": lambda lines: _edit(lines, 6, seq=1),
    "a seq past the header's": lambda lines: _edit(lines, -2, seq=99_999),
    "a payload not sealed": lambda lines: _edit(lines, 8, payload="aGVsbG8="),
    "a payload not base64": lambda lines: _edit(lines, 8, payload="@@@"),
    "a mutation id twice": lambda lines: _edit(lines, 9, mutation_id="m-dev-a-00000"),
    "a keyring version skipped": lambda lines: _edit(lines, 2, version=3),
    "half a proof": lambda lines: _edit(lines, 2, signature=None),
    "a device with a control character": lambda lines: _edit(lines, 3, name="a\x1bb"),
    "a device after the log": lambda lines: [*lines[:5], lines[-2], lines[3], lines[-1]],
    "text after the end": lambda lines: [*lines, lines[5]],
    "not JSON": lambda lines: [*lines[:7], "{not json", *lines[8:]],
    "a float seq": lambda lines: _edit(lines, 7, seq=3.5),
}


@pytest.mark.parametrize("damage", list(BAD))
def test_a_wrong_file_imports_nothing(
    servers: tuple[ServerStorage, ServerStorage], damage: str
) -> None:
    a, b = servers
    lines = exported(filled(a))
    with pytest.raises(InvalidInput, match="nothing was imported"):
        imported(b, BAD[damage](lines))
    assert b.workspaces() == [] and b.server_events(5) == []
    imported(b, lines)  # the whole file still goes in afterwards
    assert b.latest_seq(WS) == 2100


def test_a_workspace_already_here_is_refused(
    servers: tuple[ServerStorage, ServerStorage],
) -> None:
    a, b = servers
    lines = exported(filled(a))
    imported(b, lines)
    with pytest.raises(InvalidInput, match=f"already has a workspace with the id {WS}"):
        imported(b, lines)
    b.delete_workspace(WS, NOW, "t")
    b.create_workspace("ws-other", "moving", NOW)
    with pytest.raises(InvalidInput, match="with the name 'moving'"):
        imported(b, lines)
    assert [w.id for w in b.workspaces()] == ["ws-other"]


def test_an_empty_workspace_moves_too(servers: tuple[ServerStorage, ServerStorage]) -> None:
    a, b = servers
    a.create_workspace(WS, "moving", NOW)
    assert imported(b, exported(a)) == {"keyrings": 0, "devices": 0, "mutations": 0}
    assert b.latest_seq(WS) == 0 and b.devices(WS) == [] and b.keyring(WS) is None


def test_an_export_reads_one_snapshot_while_the_workspace_changes(
    servers: tuple[ServerStorage, ServerStorage],
) -> None:
    """A keyring version, a device, pushes and a compaction that commit while an export runs
    (from another thread, as a server's requests do) are wholly left out of it: the file
    holds the workspace as it was when the export began, and imports as such."""
    a, b = servers
    filled(a)
    lines = transfer.export(a, a.workspace("moving"), NOW + 10)
    first = [next(lines) for _ in range(2)]  # the header and the first keyring version

    def meanwhile() -> None:
        a.put_keyring(WS, b"ring-3", 2, revoked=[1, 2])
        a.register_device(WS, "dev-new", "phone", NOW + 20)
        for n in range(3):  # later states of the first mutation's entity: it is superseded
            a.push(WS, [replace(mutation(5000 + n, "dev-a"), entity_id="e-0")], "dev-a", NOW)
        a.record_seen([], [(WS, "dev-b", NOW + 20, 2103)])  # the one reader has read it all
        assert a.compact(WS, NOW + 20, 1, by="test").removed == 3

    changer = threading.Thread(target=meanwhile)
    changer.start()
    changer.join(timeout=60)
    assert not changer.is_alive()
    rest = list(lines)
    assert a.keyring(WS) is not None and a.keyring(WS).version == 3  # type: ignore[union-attr]

    end = json.loads(rest[-1])
    assert end == {"type": "end", "keyrings": 2, "devices": 2, "mutations": 2100}
    assert json.loads(first[0])["latest_seq"] == 2100
    assert imported(b, first + rest) == {"keyrings": 2, "devices": 2, "mutations": 2100}
    assert b.keyring(WS) is not None and b.keyring(WS).version == 2  # type: ignore[union-attr]
