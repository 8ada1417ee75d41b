"""A store whose pages a failing disk overwrote: every edge says so clearly, and `cairn repair`
salvages what SQLite can still read, keeps the damaged file aside and pulls the rest back.

The store holds a few hundred memories; pages in the middle of the file are overwritten with
random bytes (``tests/damage.py``), the header left intact, and `cairn` runs as a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from cairn.embedding.onnx import OnnxEmbedder

from ..damage import COUNT, contents, damage, fill
from .conftest import CAIRN, new_device

ONE_SCREEN = 24


@pytest.fixture(scope="module")
def damaged_files(
    tmp_path_factory: pytest.TempPathFactory, embedder: OnnxEmbedder
) -> tuple[Path, Path]:
    """(healthy, damaged) copies of one store of COUNT memories, made once for this module."""
    folder = tmp_path_factory.mktemp("damaged")
    healthy = folder / "healthy.db"
    fill(healthy, embedder)
    damaged = folder / "damaged.db"
    shutil.copyfile(healthy, damaged)
    damage(damaged)
    return healthy, damaged


@pytest.fixture
def home(tmp_path: Path, damaged_files: tuple[Path, Path]) -> Path:
    """A CAIRN_HOME whose store is a fresh copy of the damaged file."""
    folder = tmp_path / "home"
    folder.mkdir()
    shutil.copyfile(damaged_files[1], folder / "cairn.db")
    return folder


def env_of(home: Path) -> dict[str, str]:
    env = {**os.environ, "CAIRN_HOME": str(home)}
    env.pop("CAIRN_DB", None)
    return env


def cairn(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CAIRN, *args],
        env=env_of(home),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=home,
    )


@pytest.mark.parametrize(
    "args",
    [["recall", "which port does s3 use"], ["remember", "A new fact"], ["list"], ["stats"]],
    ids=["recall", "remember", "list", "stats"],
)
def test_a_damaged_store_exits_5_with_a_one_screen_message_naming_the_repair(
    home: Path, args: list[str]
) -> None:
    result = cairn(home, *args)
    shown = result.stdout + result.stderr
    assert result.returncode == 5, shown
    assert "Traceback" not in shown and "sqlite3" not in shown
    assert "is damaged" in result.stderr and "cairn repair" in result.stderr
    assert len(shown.splitlines()) <= ONE_SCREEN, shown


def test_a_damaged_store_gives_the_json_error_to_scripts(home: Path) -> None:
    result = cairn(home, "list", "--json")
    assert result.returncode == 5
    assert json.loads(result.stdout)["error"]["code"] == "store_corrupt"


async def _mcp_calls(home: Path) -> tuple[list[str], list[str]]:
    """The error texts of the store tools, then the tools the server still lists."""
    params = StdioServerParameters(command=CAIRN, args=["mcp"], env=env_of(home), cwd=home)
    with anyio.fail_after(90):
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                errors = []
                for tool, arguments in [
                    ("recall", {"query": "which port does s3 use"}),
                    ("remember", {"content": "A new fact"}),
                    ("list_memories", {}),
                ]:
                    result = await session.call_tool(tool, arguments)
                    assert result.is_error, (tool, result.content)
                    errors.append(" ".join(b.text for b in result.content if b.type == "text"))
                tools = [tool.name for tool in (await session.list_tools()).tools]
    return errors, tools


def test_the_mcp_server_answers_a_clear_error_and_keeps_running(home: Path) -> None:
    errors, tools = anyio.run(_mcp_calls, home)
    for text in errors:
        assert "store_corrupt: " in text and "cairn repair" in text, text
    assert "recall" in tools  # still serving after the errors


@pytest.fixture
def served(home: Path) -> Iterator[str]:
    """`cairn serve` over the damaged store: its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [CAIRN, "serve", "--port", str(port), "--no-autosync"],
        env=env_of(home),
        cwd=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[0].decode()
            assert time.monotonic() < deadline, "cairn serve did not answer within 60 s"
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_the_http_api_answers_a_clear_error_and_keeps_running(served: str) -> None:
    for response in (
        httpx.post(f"{served}/v1/recall", json={"query": "which port does s3 use"}),
        httpx.post(f"{served}/v1/memories", json={"content": "A new fact"}),
        httpx.get(f"{served}/v1/memories"),
        httpx.get(f"{served}/v1/stats"),
    ):
        assert response.status_code == 500, response.text
        error = response.json()["error"]
        assert error["code"] == "store_corrupt" and "cairn repair" in error["message"]
    assert httpx.get(f"{served}/healthz").status_code == 200


def _live_relations(path: Path) -> set[tuple[str, str, str]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT from_id, to_id, type FROM relations WHERE deleted = 0")
        return {(r[0], r[1], r[2]) for r in rows}
    finally:
        conn.close()


def _integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        conn.execute("INSERT INTO memories_fts(memories_fts) VALUES ('integrity-check')")
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def test_repair_salvages_what_is_readable_and_keeps_the_damaged_file(
    home: Path, damaged_files: tuple[Path, Path]
) -> None:
    healthy, damaged = damaged_files
    original = contents(healthy)

    result = cairn(home, "repair", "--json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "repaired"
    assert report["pull"] is None  # sync is not set up
    recovered, lost = report["memories_recovered"], report["memories_lost"]
    assert recovered > COUNT // 3 and lost > 0 and recovered + lost == COUNT
    assert report["rows_lost"] >= lost
    kept = Path(report["damaged_copy"])
    assert kept.parent == home and kept.name.startswith("cairn.db.damaged-")
    assert kept.read_bytes() == damaged.read_bytes()
    store = home / "cairn.db"
    assert _integrity(store) == "ok"
    now = contents(store)
    assert len(now) == recovered
    assert all(original[memory_id] == value for memory_id, value in now.items())
    # Topic chains are rebuilt among the memories that survived: each supersedes its predecessor.
    assert report["relations_recovered"] > 0

    listed = json.loads(cairn(home, "list", "--limit", "1000", "--json").stdout)
    assert listed["total"] == recovered
    memory_id, (content, _kind, _tags) = next(iter(now.items()))
    incident = content.split("incident ")[1].split(".")[0]
    hits = json.loads(cairn(home, "recall", incident, "--json").stdout)
    ranks = {hit["id"]: hit["match"]["keyword_rank"] for hit in hits}
    assert ranks.get(memory_id) == 1  # the keyword index was rebuilt
    assert cairn(home, "remember", "Written after the repair").returncode == 0
    again = json.loads(cairn(home, "repair", "--json").stdout)
    assert again["status"] == "healthy"


def test_repair_pulls_back_from_the_sync_server_what_the_damage_took(
    tmp_path: Path, server: tuple[str, str], embedder: OnnxEmbedder
) -> None:
    device = new_device(tmp_path, "laptop", server)
    store = tmp_path / "laptop" / "cairn.db"
    fill(store, embedder)
    pushed = device("sync", "now", "--json")
    assert pushed["push"]["pushed"] > COUNT
    original, relations = contents(store), _live_relations(store)
    damage(store)

    report: Any = device("repair", "--json")

    assert report["status"] == "repaired" and report["memories_lost"] > 0
    assert report["pulled_back"]["memories"] == report["memories_lost"]
    assert report["pull"]["embedded"] == 0  # pulled memories keep the vectors they were sent with
    assert contents(store) == original
    assert _live_relations(store) == relations
    assert _integrity(store) == "ok"
    assert report["memories_now"] == COUNT
    # The repaired device syncs on as before: everything is sent again, nothing refused.
    again = device("sync", "now", "--json")
    assert again["push"]["dead_lettered"] == 0 and again["pull"]["failed"] == 0
    assert device("repair", "--json")["status"] == "healthy"


def test_repair_help_says_what_it_does() -> None:
    result = subprocess.run([CAIRN, "repair", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "damaged" in result.stdout and "aside" in result.stdout


def test_repair_of_a_missing_store_says_so(tmp_path: Path) -> None:
    result = cairn(tmp_path, "repair")
    assert result.returncode == 4 and "no store" in result.stderr
    assert not (tmp_path / "cairn.db").exists()


def test_doctor_names_the_damage_and_fails(home: Path) -> None:
    checked = cairn(home, "doctor", "--offline")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    lines = {line.split()[1]: line for line in checked.stdout.splitlines()}
    assert lines["store"].startswith("FAIL") and "cairn repair" in lines["store"]
    assert lines["model"].startswith("ok") and lines["versions"].startswith("ok")
    report = json.loads(cairn(home, "doctor", "--offline", "--json").stdout)
    assert report["ok"] is False
    assert [c["check"] for c in report["checks"] if c["state"] == "fail"] == ["store"]
