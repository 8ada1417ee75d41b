"""Secrets stay secret: after a full sync through real processes, no log line holds a secret.

The server runs as `cairn server run --log-level debug` (uvicorn's and every library's records
at debug level), a device's background worker as `cairn sync daemon`, and every other step as
the `cairn` command. Their output is searched for the API keys (whole, and the secret part),
the passphrases, the recovery key and the workspace's master and data keys, raw and as hex and
base64. The only places a secret may appear are the ones that show it on purpose, once: the
new API key printed by `workspace create` / `key create`, the recovery key printed by the first
`sync setup`.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from cairn import config
from cairn.crypto import keyring
from cairn.remotes.http import HttpRemote

from .conftest import CAIRN

PASSPHRASE = "correct horse battery staple of the team"
NEW_PASSPHRASE = "a brand new passphrase nobody logs"


class Logs:
    """Everything the processes wrote, and what may show a secret on purpose."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, bytes]] = []  # (which command, what it wrote)
        self.shown: list[tuple[str, bytes]] = []  # outputs that show one secret once

    def run(
        self, env: dict[str, str], *args: str, shows_secret: bool = False, ok: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        done = subprocess.run([CAIRN, *args], env=env, capture_output=True, timeout=120)
        what = "cairn " + " ".join(args)
        assert not ok or done.returncode == 0, f"{what}: {done.stderr.decode()}"
        (self.shown if shows_secret else self.lines).append((what + " (stdout)", done.stdout))
        self.lines.append((what + " (stderr)", done.stderr))
        return done


def forms(secret: bytes) -> set[bytes]:
    """The ways a secret could be written: as is, hex, base64 (standard and URL-safe)."""
    found = {secret, secret.hex().encode(), secret.hex().upper().encode()}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        found |= {encode(secret), encode(secret).rstrip(b"=")}
    return {f for f in found if len(f) >= 8}


def device_env(tmp_path: Path, name: str, api_key: str) -> dict[str, str]:
    env = {**os.environ, "CAIRN_HOME": str(tmp_path / name), "CAIRN_KEY_STORE": "file"}
    env.pop("CAIRN_DB", None)
    env.update(CAIRN_PASSPHRASE=PASSPHRASE, CAIRN_API_KEY=api_key)
    return env


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_no_secret_reaches_a_log_during_a_full_sync(tmp_path: Path) -> None:
    logs = Logs()
    admin_env = {**os.environ, "CAIRN_HOME": str(tmp_path / "admin")}
    data = str(tmp_path / "server-data")
    made = logs.run(
        admin_env,
        "server",
        "workspace",
        "create",
        "team",
        "--data",
        data,
        "--json",
        shows_secret=True,
    )
    admin_key = json.loads(made.stdout)["key"]

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server_log = tmp_path / "server.log"
    worker_log = tmp_path / "worker.log"
    with server_log.open("wb") as out:
        server = subprocess.Popen(
            [CAIRN, "server", "run", "--port", str(port), "--data", data, "--log-level", "debug"],
            env=admin_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    worker: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: _healthy(url), "the server did not start")
        laptop = device_env(tmp_path, "laptop", admin_key)
        desktop = device_env(tmp_path, "desktop", admin_key)
        setup = ("sync", "setup", "--server", url, "--name", "laptop", "--json")
        first = logs.run(laptop, *setup, shows_secret=True)  # the recovery key, once
        recovery = json.loads(first.stdout)["recovery_key"]
        logs.run(desktop, "sync", "setup", "--server", url, "--name", "desktop")
        with worker_log.open("wb") as out:
            worker = subprocess.Popen(
                [CAIRN, "sync", "daemon", "--json"], env=desktop, stdout=out, stderr=out
            )

        logs.run(laptop, "remember", "The deploy key lives in the ops vault", "-t", "ops")
        logs.run(laptop, "sync", "push")
        wait_for(lambda: b"ops vault" in logs.run(desktop, "list").stdout, "the worker pulled")
        logs.run(laptop, "sync", "rotate-key")
        changed = {**laptop, "CAIRN_NEW_PASSPHRASE": NEW_PASSPHRASE}
        logs.run(changed, "sync", "passphrase")
        logs.run(laptop, "remember", "Sealed under the rotated key", "-t", "ops")
        logs.run(laptop, "sync", "now")
        wait_for(lambda: b"rotated key" in logs.run(desktop, "list").stdout, "pulled after")
        logs.run(laptop, "sync", "pull")
        logs.run(laptop, "sync", "status")

        server_args = ("--workspace", "team", "--data", data)
        created = logs.run(
            admin_env, "server", "key", "create", "--name", "ci", *server_args, shows_secret=True
        )
        ci_key = next(w for w in created.stdout.decode().split() if w.startswith("cairn_"))
        logs.run(admin_env, "server", "key", "list", *server_args)
        logs.run(admin_env, "server", "key", "revoke", ci_key.split("_")[1], "--data", data)
        ci = {**device_env(tmp_path, "ci", ci_key), "CAIRN_PASSPHRASE": NEW_PASSPHRASE}
        refused = logs.run(ci, "sync", "setup", "--server", url, "--name", "ci", ok=False)
        assert refused.returncode == 9 and b"revoked" in refused.stderr  # an auth failure
        forged = {**ci, "CAIRN_API_KEY": admin_key[:-6] + "AAAAAA"}
        logs.run(forged, "sync", "setup", "--server", url, ok=False)

        settings = config.load({"CAIRN_HOME": laptop["CAIRN_HOME"], "CAIRN_KEY_STORE": "file"})
        master = settings.sync.master_key
        assert master is not None
        remote = HttpRemote(url, admin_key)
        ring = remote.get_keyring()
        remote.close()
        assert ring is not None
        unlocked = keyring.open_data_keys(keyring.Keyring.from_bytes(ring.blob), master)
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGINT)
            worker.wait(30)
        server.send_signal(signal.SIGINT)
        server.wait(30)

    server_text = server_log.read_bytes()
    assert b"DEBUG" in server_text and b'"GET /v1/sync/pull' in server_text  # debug was on
    assert b"failed authentication(s)" in server_text  # the failures' summary was written
    assert b'"phase": "healthy"' in worker_log.read_bytes()
    logs.lines += [
        ("cairn server run", server_text),
        ("cairn sync daemon", worker_log.read_bytes()),
    ]

    secrets: dict[str, set[bytes]] = {
        "passphrase": forms(PASSPHRASE.encode()),
        "new passphrase": forms(NEW_PASSPHRASE.encode()),
        "recovery key": forms(recovery.encode()) | forms(keyring.parse_recovery(recovery)),
        "master key": forms(master),
        "scope key": forms(unlocked.scope_key),
        "frame key": forms(unlocked.frame_key),
    }
    assert len(unlocked.data_keys) == 2  # rotated
    for key_id, data_key in unlocked.data_keys.items():
        secrets[f"data key {key_id}"] = forms(data_key)
    for name, token in (("admin key", admin_key), ("ci key", ci_key)):
        secrets[name] = forms(token.encode()) | forms(token.split("_", 2)[2].encode())

    leaks = [
        f"{name} in the output of {what}"
        for what, text in logs.lines
        for name, shapes in secrets.items()
        if any(shape in text for shape in shapes)
    ]
    assert leaks == []
    # What shows a secret on purpose shows that one only.
    shown = {what: text for what, text in logs.shown}
    assert [name for name, shapes in secrets.items() if _has(shown, shapes)] == [
        "recovery key",
        "admin key",
        "ci key",
    ]


def _has(outputs: dict[str, bytes], shapes: set[bytes]) -> bool:
    return any(shape in text for text in outputs.values() for shape in shapes)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
