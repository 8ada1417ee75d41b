"""Devices syncing through a proxy that breaks their connections, while the server, PostgreSQL
and `cairn sync now` are SIGKILLed at seeded points: they converge and lose nothing.

CI runs a bounded, seeded slice; ``make test-slow`` runs the soak for ``CAIRN_SOAK_SECONDS``
(default 1800) and prints its figures. A failure names its seed (which decides everything: the
backend, the devices, the steps, the faults); replay it with
``CAIRN_FAULT_SEED=<seed> pytest tests/faults/test_faults.py -k under_faults``.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from cairn.embedding.onnx import OnnxEmbedder
from cairn.protocol import WireMutation

from .processes import PgCluster
from .scenario import SEED_ENV, Plan, Scenario, Tally, seeds

SOAK_SECONDS = float(os.environ.get("CAIRN_SOAK_SECONDS", "1800"))


@pytest.mark.parametrize("seed", seeds([108, 111]))  # SQLite and PostgreSQL, both with a CLI
def test_devices_converge_and_lose_nothing_under_faults(
    seed: int,
    tmp_path_factory: pytest.TempPathFactory,
    embedder: OnnxEmbedder,
    request: pytest.FixtureRequest,
) -> None:
    plan = Plan.draw(seed)
    print(f"{SEED_ENV}={seed}: {plan}")
    pg = request.getfixturevalue("fault_postgres") if plan.backend == "postgres" else None
    tally = Scenario(plan, tmp_path_factory.mktemp(f"faults-{seed}"), embedder, pg).run()
    print(tally.line())
    assert tally.lost == 0
    assert sum(tally.faults.values()) > 0, "no fault fired: the scenario proved nothing"


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 900)
def test_fault_soak(
    tmp_path_factory: pytest.TempPathFactory,
    embedder: OnnxEmbedder,
    fault_postgres: PgCluster,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Scenario after scenario (seeds counting up, so backends alternate) for
    ``CAIRN_SOAK_SECONDS``; prints each seed as it starts and the figures at the end."""
    first = int(os.environ.get(SEED_ENV, random.SystemRandom().randrange(10**6)))
    total = Tally()
    deadline = time.monotonic() + SOAK_SECONDS
    seed = first
    while time.monotonic() < deadline:
        plan = Plan.draw(seed)
        folder = tmp_path_factory.mktemp(f"soak-{seed}")
        with capsys.disabled():
            print(f"\n{SEED_ENV}={seed}: {plan}", flush=True)
        pg = fault_postgres if plan.backend == "postgres" else None
        total.add(Scenario(plan, folder, embedder, pg).run())
        shutil.rmtree(folder, ignore_errors=True)  # passed: its files are not needed
        seed += 1
    with capsys.disabled():
        print(f"\n{total.line()} (seeds {first}..{seed - 1})", flush=True)
    assert total.lost == 0


class _ServerLosesOne(Scenario):
    """A scenario whose server forgets one acknowledged mutation just before the check (its
    row deleted and the rows after it renumbered, so only the acknowledgement check sees it)."""

    def _server_log(self) -> list[WireMutation]:
        lost = sorted(self.acked)[0]
        conn = sqlite3.connect(self.folder / "server" / "server.db")
        with conn:
            (seq,) = conn.execute(
                "SELECT seq FROM mutations WHERE mutation_id = ?", (lost,)
            ).fetchone()
            conn.execute("DELETE FROM mutations WHERE seq = ?", (seq,))
            conn.execute("UPDATE mutations SET seq = seq - 1 WHERE seq > ?", (seq,))
            conn.execute("UPDATE workspaces SET latest_seq = latest_seq - 1")
        conn.close()
        return super()._server_log()


def test_the_verifier_catches_an_acknowledged_mutation_the_server_lost(
    tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    plan = Plan(seed=7, backend="sqlite", local_devices=2, cli_device=False, steps=12)
    with pytest.raises(AssertionError, match="acknowledged but not on the server"):
        _ServerLosesOne(plan, tmp_path, embedder).run()
