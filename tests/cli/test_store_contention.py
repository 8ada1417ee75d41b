"""Another process holds the store's write lock for longer than SQLite's busy timeout (5 s):
a `remember` from the CLI, the MCP server and the Python API waits it out, and the memory is
stored, not lost."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

import cairn
from cairn.model import RememberResult

from .conftest import CAIRN

HOLD = 8.0
"""Seconds another process holds the write lock: longer than the 5 s that used to end a wait."""

HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('test.holder', 'busy')")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextmanager
def held(path: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """A separate process holding ``path``'s write lock for ``seconds``."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "held"
        yield process
    finally:
        process.wait(timeout=60)


async def test_remember_waits_for_another_writer_and_the_memory_is_stored(
    cairn_env: dict[str, str], tmp_path: Path
) -> None:
    home = Path(cairn_env["CAIRN_HOME"])
    path = home / "cairn.db"
    subprocess.run([CAIRN, "stats"], env=cairn_env, check=True, capture_output=True)
    params = StdioServerParameters(command=CAIRN, args=["mcp"], env=cairn_env, cwd=tmp_path)
    results: list[RememberResult | BaseException] = []

    def from_python() -> None:
        try:
            with cairn.open(path) as store:
                results.append(store.remember("Remembered through the Python API"))
        except BaseException as exc:  # noqa: BLE001 - the assertion below shows it
            results.append(exc)

    with anyio.fail_after(120):
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                with held(path, HOLD) as holder:
                    cli = subprocess.Popen(
                        [CAIRN, "remember", "Remembered through the CLI"],
                        env=cairn_env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                    python = threading.Thread(target=from_python)
                    python.start()
                    mcp = await session.call_tool(
                        "remember", {"content": "Remembered through the MCP server"}
                    )
                    out, err = await anyio.to_thread.run_sync(lambda: cli.communicate(timeout=90))
                    await anyio.to_thread.run_sync(python.join)
                assert holder.returncode == 0  # the holder committed: it really held the lock

    assert not mcp.is_error, mcp.content
    assert cli.returncode == 0, err
    assert "waiting" in err  # the CLI says why it is slow
    assert isinstance(results[0], RememberResult), results
    listed = subprocess.run(
        [CAIRN, "list", "--json"], env=cairn_env, check=True, capture_output=True, text=True
    ).stdout
    for way in ("the Python API", "the CLI", "the MCP server"):
        assert f"Remembered through {way}" in listed
    assert out
