"""One fault scenario: devices and a sync server, faults drawn from one seed, then the verifier.

A scenario starts `cairn server run` (SQLite, or the killable PostgreSQL) with one end-to-end
workspace, puts a fault proxy in front of it for each device, and runs a seeded list of steps:
local writes (remember, edit, tag, forget, topic, the same text on two devices), syncs, and
kills (SIGKILL of the server, of PostgreSQL, or of a `cairn sync now` in flight, each at a seeded
exchange of the protocol). A device whose sync fails retries as autosync does: a transient
failure is retried after a short pause (with the server or database started again, as a
supervisor would); a failure that is not one the faults explain fails the scenario at once.

Then the proxies calm down and the verifier checks what a user relies on:

- every device holds the same memories (ids, content, tags, deleted flags, relations, vectors,
  conflicts), with nothing pending, no dead letters, and conflicts only where two devices
  changed the same memory's content;
- every content version written is current, knowingly replaced, or kept as a conflict;
- every mutation a device's outbox let go of (the server acknowledged it) is in the server's
  database exactly once, read there directly; the log's sequence numbers are gapless;
- every payload on the server opens with the workspace keys, and a new device that joins
  afterwards pulls the same memories from the log alone.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo

from cairn.embedding.onnx import OnnxEmbedder
from cairn.errors import CairnError
from cairn.protocol import WireMutation
from cairn.server import keys
from cairn.server.context import now_ms
from cairn.server.storage import ServerStorage
from cairn.server.storage.postgres import PostgresStorage
from cairn.server.storage.sqlite import SqliteStorage
from cairn.sync import payload
from cairn.sync.backoff import classify
from cairn.sync.keys import join

from ..sync.conftest import FAST_KDF
from .devices import PASSPHRASE, CliDevice, Device, LocalDevice, OutboxRow
from .processes import PgCluster, ServerProcess
from .proxy import FaultProxy, Rates

SEED_ENV = "CAIRN_FAULT_SEED"
MAX_ATTEMPTS = 40
WORDS = (
    "deploy cache schema index queue worker token flag rollout replica backup quota lease "
    "canary shard vacuum migration webhook cron latency budget"
).split()
TAGS = ("ops", "db", "web", "infra", "oncall")
TOPICS = ("staging-db", "deploy-day", "cache-ttl")


@dataclass(frozen=True)
class Plan:
    """A scenario's shape, all of it from the seed."""

    seed: int
    backend: str
    local_devices: int
    cli_device: bool
    steps: int

    @classmethod
    def draw(cls, seed: int) -> Plan:
        """The plan of ``seed``: even seeds run on SQLite, odd ones on PostgreSQL."""
        rng = random.Random(f"plan-{seed}")
        backend = ("sqlite", "postgres")[seed % 2]
        return cls(seed, backend, rng.randint(2, 3), rng.random() < 0.6, rng.randint(25, 45))


@dataclass
class Tally:
    """What scenarios did, summed: the figures a soak reports."""

    scenarios: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    mutations_verified: int = 0
    payloads_opened: int = 0
    lost: int = 0

    def add(self, other: Tally) -> None:
        self.scenarios += other.scenarios
        self.faults.update(other.faults)
        self.mutations_verified += other.mutations_verified
        self.payloads_opened += other.payloads_opened
        self.lost += other.lost

    def line(self) -> str:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.faults.items()) if n)
        return (
            f"fault suite: {self.scenarios} scenarios, {sum(self.faults.values())} faults "
            f"injected ({kinds}), {self.mutations_verified} acknowledged mutations verified, "
            f"{self.payloads_opened} payloads opened, {self.lost} lost"
        )


class Scenario:
    """Runs one ``Plan`` in ``folder``; ``pg`` is the killable PostgreSQL (postgres plans)."""

    def __init__(
        self, plan: Plan, folder: Path, embedder: OnnxEmbedder, pg: PgCluster | None = None
    ) -> None:
        assert plan.backend == "sqlite" or pg is not None
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.folder = folder
        self.embedder = embedder
        self.pg = pg
        self.devices: list[Device] = []
        self.server: ServerProcess | None = None
        self.db_url: str | None = None
        self.workspace_id = ""
        self.admin_key = ""
        self.pg_kills_before = pg.kills if pg is not None else 0
        self.acked: dict[str, str] = {}  # mutation id -> the device whose outbox let it go
        self.versions: list[tuple[str, str]] = []  # (memory id, content clock) ever written
        self.created: set[str] = set()
        self.editors: defaultdict[str, set[str]] = defaultdict(set)
        self.texts: list[str] = []
        self.events: list[str] = []
        self.began = time.monotonic()

    def run(self) -> Tally:
        try:
            self._start()
            for _ in range(self.plan.steps):
                self._step()
            return self._verify()
        except BaseException:
            print(f"{SEED_ENV}={self.plan.seed}: what happened, in order:")
            print("\n".join(self.events))
            raise
        finally:
            self._stop()

    def _event(self, what: str) -> None:
        self.events.append(f"{time.monotonic() - self.began:8.2f}s {what}")

    # -- setting up and tearing down ------------------------------------------------------------

    def _start(self) -> None:
        storage: ServerStorage
        data: Path | None = None
        if self.pg is not None and self.plan.backend == "postgres":
            self.pg.start()  # a previous scenario may have left it killed
            self.db_url = self.pg.new_database()
            storage = PostgresStorage(self.db_url)
        else:
            data = self.folder / "server"
            storage = SqliteStorage(data / "server.db")
        try:
            workspace, self.admin_key = keys.create_workspace(storage, "faults", now_ms())
        finally:
            storage.close()
        self.workspace_id = workspace.id
        env = {**os.environ, "CAIRN_HOME": str(self.folder / "server-home")}
        for variable in ("CAIRN_SERVER_DB", "CAIRN_SERVER_DATA", "CAIRN_DB"):
            env.pop(variable, None)
        self.server = ServerProcess(env, self.folder / "server.log", data, self.db_url)
        self.server.start()
        for n in range(self.plan.local_devices):
            device = LocalDevice(
                f"d{n}",
                self.folder,
                self.embedder,
                self._proxy(),
                self.admin_key,
                timeout=self.rng.uniform(0.6, 3.0),
                page_size=self.rng.choice([3, 7, 50, 5000]),
            )
            self.devices.append(device)
            device.proxy.calm = False
            device.connect(
                self._retry(lambda d=device: join(d.remote, PASSPHRASE, kdf=FAST_KDF)[0])
            )
        if self.plan.cli_device:
            cli = CliDevice("cli", self.folder, self.embedder, self._proxy())
            self.devices.append(cli)
            cli.setup(self.admin_key)  # calm: a half-done setup is the user's to redo
            cli.proxy.calm = False

    def _proxy(self) -> FaultProxy:
        assert self.server is not None
        rng = random.Random(self.rng.getrandbits(64))
        proxy = FaultProxy(self.server.port, rng, Rates(max_hold=self.rng.uniform(0.3, 1.5)))
        proxy.calm = True
        return proxy.start()

    def _stop(self) -> None:
        for device in self.devices:
            device.close()
        if self.server is not None:
            self.server.stop()

    # -- the steps --------------------------------------------------------------------------------

    def _step(self) -> None:
        actions = {"write": 50.0, "sync": 30.0, "kill_server": 5.0}
        if self.plan.backend == "postgres":
            actions["kill_postgres"] = 5.0
        if self.plan.cli_device:
            actions["kill_client"] = 8.0
        [action] = self.rng.choices(list(actions), weights=list(actions.values()))
        device = self.rng.choice(self.devices)
        self._event(f"{action} on {device.name}")
        if action == "write":
            self._write(device)
        elif action == "sync":
            self._sync(device)
        elif action == "kill_client":
            cli = next(d for d in self.devices if isinstance(d, CliDevice))
            event = self.rng.choice(["request", "response"])
            self._sync(cli, (event, self.rng.randint(1, 4), self.rng.uniform(0.0, 0.05)))
        else:
            self._kill_during_sync(device, action)

    def _text(self) -> str:
        words = " ".join(self.rng.choice(WORDS) for _ in range(4))
        text = f"{words.capitalize()} (note {len(self.texts)})"
        self.texts.append(text)
        return text

    def _write(self, device: Device) -> None:
        store = device.store
        op = self.rng.choice(["remember", "remember", "same", "topic", "edit", "tag", "forget"])
        live = store.list(limit=1000)
        target = self.rng.choice(live) if live else None
        if op == "remember" or (op in ("edit", "tag", "forget") and target is None):
            made = store.remember(self._text(), tags=[self.rng.choice(TAGS)])
        elif op == "same":  # what another device may have remembered already
            text = self.rng.choice(self.texts) if self.texts else self._text()
            made = store.remember(text, tags=[self.rng.choice(TAGS)])
        elif op == "topic":
            made = store.remember(self._text(), topic_key=self.rng.choice(TOPICS))
        else:
            assert target is not None
            if op == "edit":
                edited = store.edit(target.id, self._text())
                self.versions.append((target.id, edited.hlc))
                self.editors[target.id].add(device.name)
            elif op == "tag":
                store.remember(target.content, tags=[self.rng.choice(TAGS)])
            else:
                store.forget(target.id)
            return
        if made.created:
            self.created.add(made.memory.id)
            self.versions.append((made.memory.id, made.memory.hlc))

    def _kill_during_sync(self, device: Device, action: str) -> None:
        """SIGKILL the server or PostgreSQL at a seeded exchange of ``device``'s next sync
        (or, if the sync ends before it, right after)."""
        assert self.server is not None
        victim = self.server.kill if action == "kill_server" else self._kill_postgres
        event = self.rng.choice(["request", "response"])
        number = self.rng.randint(1, 4)
        delay = self.rng.uniform(0.0, 0.05)
        start = device.proxy.requests
        fired: list[bool] = []

        def hook(seen: str, exchange: int) -> None:
            if seen == event and exchange == start + number and not fired:
                fired.append(True)
                time.sleep(delay)  # on the proxy's thread: the answer waits too
                self._event(f"{action} at the {event} of exchange {exchange}")
                victim()

        device.proxy.hook = hook
        try:
            self._sync(device)
        finally:
            device.proxy.hook = None
        if not fired:
            self._event(f"{action} after the sync")
            victim()

    def _kill_postgres(self) -> None:
        assert self.pg is not None
        self.pg.kill()

    # -- syncing as a user or autosync would ------------------------------------------------------

    def _sync(self, device: Device, kill_at: tuple[str, int, float] | None = None) -> None:
        """Sync ``device`` until it succeeds, retrying transient failures (the first attempt
        of a CLI device may be SIGKILLed at ``kill_at``)."""
        for attempt in range(MAX_ATTEMPTS):
            before = device.outbox()
            if isinstance(device, CliDevice):
                outcome = device.sync(kill_at if attempt == 0 else None)
            else:
                outcome = device.sync()
            if not outcome.ok:
                failure = "SIGKILLed" if outcome.killed else repr(outcome.error)
                self._event(f"{device.name} sync attempt {attempt}: {failure}")
            self._note_acks(device, before, device.outbox())
            letters = device.dead_letters()
            assert not letters, f"{device.name} set changes aside: {letters}"
            if outcome.ok:
                return
            if outcome.error is not None:
                self._expected(outcome.error)
            self._supervise()
            time.sleep(min(0.05 * 2**attempt, 0.5))
        raise AssertionError(f"{device.name} did not sync in {MAX_ATTEMPTS} attempts")

    def _retry(self, call: Any) -> Any:
        for attempt in range(MAX_ATTEMPTS):
            try:
                return call()
            except CairnError as exc:
                self._expected(exc)
            self._supervise()
            time.sleep(min(0.05 * 2**attempt, 0.5))
        raise AssertionError(f"no success in {MAX_ATTEMPTS} attempts")

    def _expected(self, exc: CairnError) -> None:
        """Return if the faults explain ``exc``; fail the scenario otherwise."""
        permanent, reason = classify(exc)
        if not permanent and reason == "unreachable":
            return  # a cut connection, a dead server, or (503) a dead database under it
        raise AssertionError(f"seed {self.plan.seed}: unexpected {exc.code}: {exc.message}")

    def _supervise(self) -> None:
        """Start again whatever was killed, as systemd or Docker would."""
        assert self.server is not None
        if self.pg is not None and self.plan.backend == "postgres" and not self.pg.running():
            self.pg.start()
        if not self.server.running():
            self.server.reap()
            self.server.start()

    def _note_acks(self, device: Device, before: list[OutboxRow], after: list[OutboxRow]) -> None:
        """The mutations the server acknowledged during a sync: an outbox entry leaves only
        once its entity's newest entry was acknowledged, so for each entity whose entries
        left, the newest of them is what the server stored."""
        remaining = {seq for seq, _, _ in after}
        gone: dict[str, tuple[int, str]] = {}
        for seq, mutation_id, entity_id in before:
            if seq not in remaining and (entity_id not in gone or seq > gone[entity_id][0]):
                gone[entity_id] = (seq, mutation_id)
        for _, mutation_id in gone.values():
            self.acked[mutation_id] = device.name

    # -- the verifier -----------------------------------------------------------------------------

    def _verify(self) -> Tally:
        assert self.server is not None
        for device in self.devices:
            device.proxy.calm = True
        self._supervise()
        for _round in range(4):
            for device in self.devices:
                self._sync(device)
        first = self.devices[0]
        expected = first.snapshot()
        for device in self.devices:
            assert device.outbox() == [], f"{device.name} still has changes to send"
            assert device.dead_letters() == []
            assert device.snapshot() == expected, f"{device.name} differs from {first.name}"
        memories: dict[str, Any] = expected["memories"]  # type: ignore[assignment]
        assert self.created <= set(memories), "a created memory is missing"
        for memory_id, _hlc, _content in expected["conflicts"]:  # type: ignore[attr-defined]
            assert len(self.editors[memory_id]) >= 2, f"a conflict on {memory_id} nobody made"
        self._no_content_lost(first)
        rows = self._server_log()
        lost = [m for m in self.acked if m not in {r.mutation_id for r in rows}]
        assert not lost, f"seed {self.plan.seed}: acknowledged but not on the server: {lost}"
        opened = self._open_all(rows)
        self._fresh_device_agrees(expected)
        faults: Counter[str] = Counter({"kill_server": self.server.kills})
        if self.pg is not None:
            faults["kill_postgres"] = self.pg.kills - self.pg_kills_before
        for device in self.devices:
            faults.update(device.proxy.faults)
            if isinstance(device, CliDevice):
                faults["kill_client"] += device.kills
        return Tally(1, faults, len(self.acked), opened, len(lost))

    def _no_content_lost(self, device: Device) -> None:
        """Every content version written is current, knowingly overwritten, or a conflict."""
        with device.store.db.read() as conn:
            for memory_id, hlc in self.versions:
                deleted, current, ancestors = conn.execute(
                    "SELECT deleted, coalesce(json_extract(field_hlc, '$.content'), "
                    "created_hlc), ancestors FROM memories WHERE id = ?",
                    (memory_id,),
                ).fetchone()
                kept = conn.execute(
                    "SELECT 1 FROM conflicts WHERE memory_id = ? AND hlc = ?", (memory_id, hlc)
                ).fetchone()
                assert deleted or hlc == current or hlc in json.loads(ancestors) or kept, (
                    f"seed {self.plan.seed}: content version {hlc} of {memory_id} was lost"
                )

    def _server_log(self) -> list[WireMutation]:
        """The workspace's mutations as the server's database holds them (read directly),
        after checking each acknowledged one is there once and the sequence has no gaps."""
        sql = (
            "SELECT seq, mutation_id, version, device_id, hlc, entity_id, scope, payload "
            "FROM mutations WHERE workspace_id = {0} ORDER BY seq"
        )
        if self.db_url is not None:
            assert self.pg is not None
            name = conninfo.conninfo_to_dict(self.db_url)["dbname"]
            admin = conninfo.make_conninfo(self.pg.admin_url, dbname=name)
            with psycopg.connect(admin) as conn:  # a superuser: row-level security aside
                rows = conn.execute(sql.format("%s"), (self.workspace_id,)).fetchall()
                latest = conn.execute(
                    "SELECT latest_seq FROM workspaces WHERE id = %s", (self.workspace_id,)
                ).fetchone()[0]
        else:
            path = self.folder / "server" / "server.db"
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                rows = conn.execute(sql.format("?"), (self.workspace_id,)).fetchall()
                latest = conn.execute(
                    "SELECT latest_seq FROM workspaces WHERE id = ?", (self.workspace_id,)
                ).fetchone()[0]
            finally:
                conn.close()
        seqs = [int(r[0]) for r in rows]
        assert seqs == list(range(1, len(rows) + 1)) and latest == len(rows), (
            f"seed {self.plan.seed}: the server's sequence has gaps or repeats"
        )
        ids = Counter(str(r[1]) for r in rows)
        twice = [m for m, n in ids.items() if n > 1]
        assert not twice, f"seed {self.plan.seed}: stored more than once: {twice}"
        return [
            WireMutation(mid, device, hlc, entity, scope, bytes(body), seq, version)
            for seq, mid, version, device, hlc, entity, scope, body in rows
        ]

    def _open_all(self, rows: list[WireMutation]) -> int:
        """Open and decode every payload in the log with the workspace keys."""
        local = next(d for d in self.devices if isinstance(d, LocalDevice))
        assert local.syncer is not None
        for mutation in rows:
            payload.decode(mutation, local.syncer.envelopes.open(mutation))
        return len(rows)

    def _fresh_device_agrees(self, expected: dict[str, object]) -> None:
        """A device that joins now pulls the same memories from the log alone."""
        fresh = LocalDevice(
            "fresh", self.folder, self.embedder, self._proxy(), self.admin_key, 30.0, 5000
        )
        self.devices.append(fresh)  # closed with the others
        fresh.connect(join(fresh.remote, PASSPHRASE)[0])
        self._sync(fresh)
        assert fresh.snapshot() == expected, "a new device pulled something else"


def seeds(default: list[int]) -> list[int]:
    """The seeds to run: ``CAIRN_FAULT_SEED`` (one seed, to replay a failure) or ``default``."""
    chosen = os.environ.get(SEED_ENV)
    return [int(chosen)] if chosen else default
