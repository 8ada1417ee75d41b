"""`cairn server ...` end to end: admin commands and `cairn server run`, as subprocesses."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import typer.main
from typer.testing import CliRunner

from cairn.cli.app import app
from cairn.crypto import keyring
from cairn.errors import AuthFailed, Forbidden
from cairn.protocol import WireMutation
from cairn.remotes.http import HttpRemote

from ..conftest import a_keyring, envelope

CAIRN = str(Path(sys.executable).with_name("cairn"))


@pytest.fixture
def env(
    cairn_env: dict[str, str], server_backend: str, request: pytest.FixtureRequest
) -> dict[str, str]:
    """A fresh CAIRN_HOME; the server's data then defaults to $CAIRN_HOME/server, or lives in a
    fresh PostgreSQL database (CAIRN_SERVER_DB) on the postgres backend."""
    cairn_env.pop("CAIRN_SERVER_DATA", None)
    cairn_env.pop("CAIRN_SERVER_DB", None)
    if server_backend == "postgres":
        cairn_env["CAIRN_SERVER_DB"] = request.getfixturevalue("postgres").new_database()
    return cairn_env


def cairn(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CAIRN, "server", *args], env=env, capture_output=True, text=True, timeout=60
    )


def ok_json(env: dict[str, str], *args: str) -> object:
    result = cairn(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def server_url(env: dict[str, str]) -> Iterator[str]:
    """`cairn server run` as a subprocess on a free port, over $CAIRN_HOME/server."""
    with serving(env) as (url, _process):
        yield url


@contextmanager
def serving(
    env: dict[str, str], *args: str, log: list[str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`cairn server run [args]` on a free port until the block ends (then SIGINT, exit 0);
    what it wrote to standard error is added to ``log``."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [CAIRN, "server", "run", "--port", str(port), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "`cairn server run` did not answer within 30 s"
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url, process
    except BaseException:  # a failed test leaves no server (nor worker) behind
        for leftover in [*psutil.Process(process.pid).children(recursive=True), process]:
            leftover.kill()
        process.communicate(timeout=15)
        raise
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    if log is not None:
        log.append(stderr)
    assert f"on http://127.0.0.1:{port}" in stderr
    if "CAIRN_SERVER_DB" in env:
        assert "dbname=cairn_" in stderr and "password" not in stderr
    else:
        assert str(Path(env["CAIRN_HOME"]) / "server" / "server.db") in stderr


def test_several_workers_serve_one_workspace_gaplessly(env: dict[str, str]) -> None:
    """`--workers 2`: two processes over one database; pushes through both and pulls through
    both see one gapless sequence, each mutation once."""
    made = ok_json(env, "workspace", "create", "team")
    assert isinstance(made, dict)
    with serving(env, "--workers", "2") as (url, process):
        workers = psutil.Process(process.pid).children(recursive=True)
        assert len([w for w in workers if "python" in w.name() or "cairn" in w.name()]) >= 2
        failures: list[BaseException] = []

        def push(device: str) -> None:
            try:
                for n in range(10):  # a new connection each time: spread over the workers
                    remote = HttpRemote(url, made["key"], device_id=device)
                    batch = [mutation(n * 10 + i, device) for i in range(5)]
                    assert remote.push(batch).stored == 5
                    remote.close()
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=push, args=(f"dev-{d}",)) for d in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        reader = HttpRemote(url, made["key"])
        cursor, seqs = None, []
        while True:
            page = reader.pull(cursor, limit=33)
            seqs += [m.seq for m in page.mutations]
            cursor = page.cursor
            if not page.has_more:
                break
        reader.close()
        assert seqs == list(range(1, 4 * 10 * 5 + 1))


def mutation(n: int, device: str = "dev-a") -> WireMutation:
    return WireMutation(
        f"m-{device}-{n}",
        device,
        f"{1_700_000_000_000 + n:013d}-0000-{device}",
        "e",
        None,
        envelope(),
    )


def test_a_new_workspace_key_is_shown_once_and_works(env: dict[str, str], server_url: str) -> None:
    created = cairn(env, "workspace", "create", "team")
    assert created.returncode == 0, created.stderr
    assert "not shown again" in created.stdout
    (token,) = [w for w in created.stdout.split() if w.startswith("cairn_")]
    listed = cairn(env, "workspace", "list")
    assert "team" in listed.stdout and token not in listed.stdout

    remote = HttpRemote(server_url, token)
    assert remote.push([mutation(1)]).stored == 1
    assert remote.status()["workspace"] == "team"
    remote.close()


def test_keys_are_created_listed_and_revoked(env: dict[str, str], server_url: str) -> None:
    made = ok_json(env, "workspace", "create", "team")
    assert isinstance(made, dict) and made["name"] == "team" and made["key"].startswith("cairn_")
    key = ok_json(env, "key", "create", "--workspace", "team", "--name", "ci", "--scope", "read")
    assert isinstance(key, dict) and key["scopes"] == ["read"]

    reader = HttpRemote(server_url, key["key"])
    assert reader.pull(None).mutations == []
    with pytest.raises(Forbidden):
        reader.push([mutation(1)])

    deadline = time.monotonic() + 30
    while True:  # the server records a key's use in a batch, within a second for a new key
        listed = ok_json(env, "key", "list", "--workspace", "team")
        assert isinstance(listed, list) and [k["name"] for k in listed] == ["admin", "ci"]
        used = next(k for k in listed if k["name"] == "ci")["last_used_at"]
        if used is not None or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert key["key"] not in json.dumps(listed)
    assert used is not None

    revoked = ok_json(env, "key", "revoke", key["id"])
    assert isinstance(revoked, dict) and revoked["revoked_at"]
    with pytest.raises(AuthFailed, match="revoked"):  # the running server sees it at once
        reader.pull(None)
    reader.close()
    workspaces = ok_json(env, "workspace", "list")
    assert isinstance(workspaces, list) and workspaces[0]["keys"] == 1


@pytest.mark.parametrize("server_backend", ["sqlite"])  # what --data and its defaults mean
def test_admin_errors_say_what_to_do_and_exit_nonzero(env: dict[str, str], tmp_path: Path) -> None:
    data = str(tmp_path / "elsewhere")
    assert cairn(env, "workspace", "create", "team", "--data", data).returncode == 0
    again = cairn(env, "workspace", "create", "team", "--data", data)
    assert again.returncode == 2 and "already exists" in again.stderr
    missing = cairn(env, "key", "list", "--workspace", "team")  # the default data dir is empty
    assert missing.returncode == 4 and "workspace list" in missing.stderr
    unknown = cairn(env, "key", "revoke", "000000000000", "--data", data)
    assert unknown.returncode == 4
    bad_name = cairn(env, "workspace", "create", "no spaces please", "--data", data)
    assert bad_name.returncode == 2 and "workspace name" in bad_name.stderr
    env_data = {**env, "CAIRN_SERVER_DATA": data}
    assert "team" in cairn(env_data, "workspace", "list").stdout


@pytest.mark.parametrize("server_backend", ["sqlite"])  # about HTTP, not the storage
def test_x_forwarded_for_is_believed_only_from_the_proxies_named(env: dict[str, str]) -> None:
    """By default the TCP peer is the client whose failed authentications count: a client
    cannot claim other addresses to escape the limit. `--forwarded-allow-ips` names a proxy."""
    ok_json(env, "workspace", "create", "team")
    limits = ("--auth-failure-rate", "0.01", "--auth-failure-burst", "2")

    def failures(url: str) -> list[int]:  # each claims another address, with another key id
        return [
            httpx.get(
                f"{url}/v1/sync/status",
                headers={
                    "Authorization": f"Bearer cairn_{n:012x}_{'S' * 43}",
                    "X-Forwarded-For": f"203.0.113.{n}",
                },
                timeout=30,
            ).status_code
            for n in range(1, 5)
        ]

    log: list[str] = []
    with serving(env, *limits, log=log) as (url, _process):
        assert failures(url) == [401, 401, 429, 429]
    with serving(env, *limits, "--forwarded-allow-ips", "127.0.0.1", log=log) as (url, _process):
        assert failures(url) == [401, 401, 401, 401]
    untrusted, trusted = log
    # Each server sums its failures in one warning when it stops (and every minute).
    assert "4 failed authentication(s) (unknown_key 4; 2 answered 429)" in untrusted
    assert "from 1 client address(es), most from 127.0.0.1 (4)" in untrusted
    assert "from 4 client address(es)" in trusted and "203.0.113.1 (1)" in trusted
    bad = cairn(env, "run", "--forwarded-allow-ips", "proxy.internal")
    assert bad.returncode == 2 and "not an IP address" in bad.stderr


def _server_commands() -> list[tuple[list[str], Any]]:
    """Every command under `cairn server`, groups included (typer vendors its own click)."""
    root: Any = typer.main.get_command(app)
    found: list[tuple[list[str], Any]] = []
    pending: list[tuple[list[str], Any]] = [(["server"], root.commands["server"])]
    while pending:
        path, command = pending.pop()
        found.append((path, command))
        subcommands = getattr(command, "commands", {})
        pending += [([*path, name], sub) for name, sub in subcommands.items()]
    return found


def test_every_server_command_has_help() -> None:
    commands = _server_commands()
    assert {" ".join(p) for p, _ in commands} >= {
        "server run",
        "server workspace create",
        "server workspace list",
        "server key create",
        "server key list",
        "server key revoke",
    }
    runner = CliRunner()
    for path, command in commands:
        assert command.help and len(command.help) > 15, path
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                assert getattr(param, "help", None), f"{path} --{param.name} has no help"
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, path


def test_an_admin_lists_keyring_versions_and_rolls_back_from_the_cli(
    env: dict[str, str], server_url: str
) -> None:
    made = ok_json(env, "workspace", "create", "team")
    assert isinstance(made, dict)
    device = HttpRemote(server_url, made["key"])
    ring, keys = a_keyring()
    blob = ring.to_bytes()
    device.put_keyring(blob, None, (), keyring.sign(keys.master, ring.keyring_id, 1, blob, ()))
    changed = keyring.change_passphrase(ring, keys, "another passphrase").to_bytes()
    proof = keyring.sign(keys.master, ring.keyring_id, 2, changed, ())
    device.put_keyring(changed, 1, (), proof)

    listed = ok_json(env, "workspace", "keyring", "team")
    assert isinstance(listed, list) and [v["version"] for v in listed] == [2, 1]
    assert all(v["signed"] and v["signed_version"] == v["version"] for v in listed)
    assert listed[1]["sha256"] == hashlib.sha256(blob).hexdigest()
    assert ok_json(env, "workspace", "rollback-keyring", "team", "1") == {
        "workspace": "team",
        "version": 3,
        "restored": 1,
    }
    restored = device.get_keyring()
    assert restored is not None and (restored.version, restored.blob) == (3, blob)
    assert keyring.authenticate(restored, keys.master, ring.keyring_id)[1] == keys
    text = cairn(env, "workspace", "keyring", "team").stdout
    assert text.splitlines()[0].startswith("3 ") and "signed for version 1" in text
    too_new = cairn(env, "workspace", "rollback-keyring", "team", "3")
    assert too_new.returncode == 2 and "earlier version" in too_new.stderr
    device.close()
