"""The devices of a fault scenario, each behind its own fault proxy.

``LocalDevice``: a real ``Store`` and the real sync engine (``Syncer``) over the HTTP remote, in
this process. ``CliDevice``: its own CAIRN_HOME, set up and synced by `cairn` subprocesses (so a
scenario can SIGKILL it mid-sync); the scenario writes to its store in this process between
those runs, through the same ``Store`` class the CLI uses.

Both expose what the verifier reads: the outbox (to learn which mutations a sync got
acknowledged), dead letters, and a snapshot of everything replicas must agree on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cairn.crypto.keyring import Unlocked
from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.errors import CairnError, error_for
from cairn.remotes.http import HttpRemote
from cairn.store.db import Database
from cairn.sync.engine import Syncer

from ..sync.conftest import snapshot
from .processes import CAIRN
from .proxy import FaultProxy

PASSPHRASE = "a passphrase the fault suite knows"
PROJECT = "faults"

OutboxRow = tuple[int, str, str]
"""(seq, mutation_id, entity_id) of an outbox entry."""


@dataclass
class SyncOutcome:
    """How one sync attempt ended: ok, or the error it raised (``killed``: we SIGKILLed it)."""

    ok: bool
    error: CairnError | None = None
    killed: bool = False


class Device:
    """What both kinds of device share: a store file in this process and a proxy."""

    name: str
    store: Store
    proxy: FaultProxy

    def outbox(self) -> list[OutboxRow]:
        with self.store.db.read() as conn:
            rows = conn.execute("SELECT seq, mutation_id, entity_id FROM outbox").fetchall()
        return [(int(s), str(m), str(e)) for s, m, e in rows]

    def dead_letters(self) -> list[tuple[str, str, str, str]]:
        with self.store.db.read() as conn:
            rows = conn.execute(
                "SELECT direction, mutation_id, code, message FROM dead_letters"
            ).fetchall()
        return [tuple(map(str, r)) for r in rows]  # type: ignore[misc]

    def snapshot(self) -> dict[str, object]:
        return snapshot(self.store)

    def sync(self) -> SyncOutcome:
        raise NotImplementedError

    def close(self) -> None:
        self.store.close()
        self.proxy.stop()


class LocalDevice(Device):
    """A device in this process: its Syncer keeps one HTTP client, as autosync's worker does."""

    def __init__(
        self,
        name: str,
        folder: Path,
        embedder: OnnxEmbedder,
        proxy: FaultProxy,
        api_key: str,
        timeout: float,
        page_size: int,
    ) -> None:
        self.name = name
        self.proxy = proxy
        self.store = Store(Database(folder / f"{name}.db"), embedder, project=PROJECT, source=name)
        self.remote = HttpRemote(
            proxy.url, api_key, device_id=self.store.device_id(), timeout=timeout
        )
        self.page_size = page_size
        self.syncer: Syncer | None = None

    def connect(self, keys: Unlocked) -> None:
        self.syncer = Syncer(self.store, self.remote, keys, page_size=self.page_size)

    def sync(self) -> SyncOutcome:
        assert self.syncer is not None
        try:
            self.syncer.now()
        except CairnError as exc:
            return SyncOutcome(False, exc)
        return SyncOutcome(True)

    def close(self) -> None:
        if self.syncer is not None:
            self.syncer.close()
        else:
            self.remote.close()
        super().close()


class CliDevice(Device):
    """A device driven by `cairn` subprocesses with its own CAIRN_HOME."""

    def __init__(self, name: str, folder: Path, embedder: OnnxEmbedder, proxy: FaultProxy) -> None:
        self.name = name
        self.proxy = proxy
        self.home = folder / name
        self.home.mkdir(parents=True)
        self.env = {**os.environ, "CAIRN_HOME": str(self.home), "CAIRN_PASSPHRASE": PASSPHRASE}
        for variable in ("CAIRN_DB", "CAIRN_API_KEY", "CAIRN_SERVER_DB", "CAIRN_SERVER_DATA"):
            self.env.pop(variable, None)
        self.embedder = embedder
        self.kills = 0
        self.store = self._open()

    def _open(self) -> Store:
        return Store(Database(self.home / "cairn.db"), self.embedder, project=PROJECT)

    def run(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CAIRN, *args],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def setup(self, api_key: str) -> None:
        made = self.run(
            "sync",
            "setup",
            "--server",
            self.proxy.url,
            "--api-key",
            api_key,
            "--name",
            self.name,
            "--json",
        )
        assert made.returncode == 0, f"cairn sync setup: {made.stderr}"

    def sync(self, kill_at: tuple[str, int, float] | None = None) -> SyncOutcome:
        """`cairn sync now`; ``kill_at`` (event, exchange number, delay) SIGKILLs it that long
        after its proxy sees that exchange's request or answer (if the run gets that far)."""
        process = subprocess.Popen(
            [CAIRN, "sync", "now", "--json"],
            env=self.env,
            cwd=self.home,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        killed = threading.Event()
        if kill_at is not None:
            event, number, delay = kill_at
            start = self.proxy.requests

            def kill() -> None:
                if process.poll() is None:
                    process.send_signal(signal.SIGKILL)
                    killed.set()

            def hook(seen: str, exchange: int) -> None:
                if seen == event and exchange == start + number:
                    self.proxy.hook = None
                    threading.Timer(delay, kill).start()

            self.proxy.hook = hook
        try:
            out, err = process.communicate(timeout=180)
        finally:
            if kill_at is not None:
                self.proxy.hook = None
        if killed.is_set():
            self.kills += 1
            return SyncOutcome(False, killed=True)
        if process.returncode == 0:
            return SyncOutcome(True)
        try:
            error: Any = json.loads(out)["error"]
            return SyncOutcome(False, error_for(error["code"], error["message"]))
        except (ValueError, KeyError, TypeError):
            raise AssertionError(
                f"`cairn sync now` failed without a Cairn error (exit {process.returncode}):\n{err}"
            ) from None
