"""Helpers for driving `cairn` as separate devices (one CAIRN_HOME each) against a server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

CAIRN = str(Path(sys.executable).with_name("cairn"))
Device = Callable[..., Any]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(url, admin key) of a sync server process with one end-to-end workspace."""
    with server_process(tmp_path, "e2e") as (url, key, _warning):
        yield url, key


@contextmanager
def server_process(tmp_path: Path, mode: str, *options: str) -> Iterator[tuple[str, str, str]]:
    """A server process with one workspace of ``mode`` (and ``options`` for `server run`):
    (url, admin key, what create warned)."""
    env = {**os.environ, "CAIRN_HOME": str(tmp_path / "server-home")}
    data = str(tmp_path / "server-data")
    made = subprocess.run(
        [CAIRN, "server", "workspace", "create", "team", "--data", data, "--mode", mode]
        + ["--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(made.stdout)["mode"] == mode
    key = json.loads(made.stdout)["key"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            CAIRN,
            "server",
            "run",
            "--port",
            str(port),
            "--data",
            data,
            "--rate-limit",
            "0",
            *options,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=1).raise_for_status()
            break
        except httpx.HTTPError:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
    try:
        yield url, key, made.stderr
    finally:
        process.terminate()
        process.wait(10)


def new_device(tmp_path: Path, name: str, server: tuple[str, str]) -> Device:
    run = in_home(tmp_path, name)
    url, key = server
    run("sync", "setup", "--server", url, "--api-key", key, "--name", name, "--json")
    return run


def env_for(tmp_path: Path, name: str) -> dict[str, str]:
    """The environment of device ``name``: its own CAIRN_HOME, the team's passphrase."""
    env = {**os.environ, "CAIRN_HOME": str(tmp_path / name)}
    env.pop("CAIRN_DB", None)
    env.pop("CAIRN_API_KEY", None)
    env["CAIRN_PASSPHRASE"] = "a passphrase the whole team knows"
    return env


def in_home(tmp_path: Path, name: str) -> Device:
    """`cairn` with its own CAIRN_HOME and the team's passphrase in the environment."""
    env = env_for(tmp_path, name)

    def run(*args: str, ok: bool = True) -> Any:
        result = subprocess.run(
            [CAIRN, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        if ok:
            assert result.returncode == 0, f"cairn {' '.join(args)}: {result.stderr}"
        return json.loads(result.stdout) if "--json" in args and result.stdout else result

    return run


def memories_of(device: Device) -> list[tuple[str, str, list[str]]]:
    listed = device("list", "--limit", "100", "--json")["memories"]
    return sorted((m["id"], m["content"], m["tags"]) for m in listed)
