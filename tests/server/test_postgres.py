"""What only the PostgreSQL storage promises (the shared contract is test_storage.py): row-level
security behind every query, migrations, and gapless sequences across processes."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from cairn.errors import RemoteUnreachable, SchemaTooNew
from cairn.protocol import WireMutation
from cairn.remotes.http import HttpRemote
from cairn.server import keys
from cairn.server.storage.postgres import PostgresStorage

from ..conftest import envelope

NOW = 1_700_000_000_000
Postgres = Any  # the tests/conftest.py fixture's type (conftest modules are not importable)


@pytest.fixture
def database(postgres: Postgres) -> str:
    return str(postgres.new_database())


@pytest.fixture
def storage(database: str) -> Iterator[PostgresStorage]:
    made = PostgresStorage(database)
    yield made
    made.close()


def mutation(n: int, device: str = "dev-a") -> WireMutation:
    return WireMutation(
        f"m-{device}-{n:05d}", device, f"{NOW + n:013d}-0000-{device}", f"e-{n}", None, envelope()
    )


def test_a_query_that_forgets_its_workspace_filter_sees_one_workspace_only(
    storage: PostgresStorage, database: str
) -> None:
    """Defence in depth: a bug that drops ``WHERE workspace_id = ...`` still cannot read
    another workspace's rows, because row-level security filters for the declared one."""
    a, _ = keys.create_workspace(storage, "a", NOW)
    b, _ = keys.create_workspace(storage, "b", NOW)
    for ws, device in ((a, "dev-a"), (b, "dev-b")):
        storage.push(ws.id, [mutation(1, device), mutation(2, device)], device, NOW)
        storage.put_keyring(ws.id, f"ring-{device}".encode(), None)
        storage.register_device(ws.id, device, device, NOW)
    for table, column in [
        ("mutations", "workspace_id"),
        ("api_keys", "workspace_id"),
        ("devices", "workspace_id"),
        ("keyring_versions", "workspace_id"),
        ("workspaces", "id"),
    ]:
        with storage._tx(a.id) as conn:  # the buggy query: no filter at all
            seen = {row[0] for row in conn.execute(f"SELECT {column} FROM {table}")}
        assert seen == {a.id}, table
    # A connection that declares no workspace sees nothing at all.
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM mutations").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM workspaces").fetchone() == (0,)
    # Writing into another workspace from a transaction declared for one is refused.
    with pytest.raises(psycopg.errors.InsufficientPrivilege), storage._tx(a.id) as conn:
        conn.execute(
            "INSERT INTO devices (workspace_id, device_id, name, first_seen, last_seen) "
            "VALUES (%s, 'intruder', '', 0, 0)",
            (b.id,),
        )
    assert [d.device_id for d in storage.devices(b.id)] == ["dev-b"]


def test_the_app_role_is_not_one_that_bypasses_row_level_security(database: str) -> None:
    with psycopg.connect(database) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    assert row == (False, False)


def test_the_database_survives_reopening_and_a_newer_schema_is_refused(database: str) -> None:
    first = PostgresStorage(database)
    ws = first.create_workspace("w", "team", NOW)
    first.push(ws.id, [mutation(1)], None, NOW)
    first.close()
    second = PostgresStorage(database)  # migrations are not run twice
    assert second.latest_seq(ws.id) == 1
    second.close()
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("UPDATE cairn_schema SET version = 99")
    with pytest.raises(SchemaTooNew, match="upgrade"):
        PostgresStorage(database)


PROCESS = textwrap.dedent(
    """
    import json, sys, time
    from cairn.protocol import SEALED_HEADER, SEALED_VERSION, WireMutation
    from cairn.server.storage.postgres import PostgresStorage

    def envelope(body):
        return SEALED_HEADER.pack(SEALED_VERSION, 1, b"s" * 16, b"n" * 12) + body + b"t" * 16

    url, workspace, role, name, count = sys.argv[1:6]
    storage = PostgresStorage(url, max_size=2)
    if role == "push":
        acknowledged = []
        for n in range(int(count)):
            batch = [
                WireMutation(f"{name}-{n}-{i}", name, f"{n:013d}-{i:04x}-{name}", f"e-{i}", None,
                             envelope(b"x"))
                for i in range(7)
            ]
            storage.push(workspace, batch, name, n)
            storage.push(workspace, batch[:3], name, n)  # a retry stores nothing
            acknowledged += [m.mutation_id for m in batch]
        print(json.dumps(acknowledged))
    else:
        seen, since, idle = [], 0, 0
        while idle < 20:
            page = storage.pull(workspace, since, 13, None)
            seen += [[m.seq, m.mutation_id] for m in page.mutations]
            since = int(page.cursor)
            idle = 0 if page.mutations else idle + 1
            time.sleep(0 if page.mutations else 0.05)
        print(json.dumps(seen))
    storage.close()
    """
)


def test_pusher_and_puller_processes_see_gapless_sequences_each_mutation_once(
    storage: PostgresStorage, database: str
) -> None:
    """Separate processes, as separate app workers are: pushes into one workspace commit in
    seq order, so every puller reads 1, 2, 3 ... with nothing skipped or repeated."""
    ws, _ = keys.create_workspace(storage, "team", NOW)
    started = [
        subprocess.Popen(
            [sys.executable, "-c", PROCESS, database, ws.id, role, f"{role}-{i}", "12"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for role, i in [("pull", 0), ("push", 0), ("push", 1), ("push", 2), ("pull", 1)]
    ]
    results = []
    for process in started:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        results.append(json.loads(out))
    acknowledged = {m for result in results[1:4] for m in result}
    assert len(acknowledged) == 3 * 12 * 7
    for pulled in (results[0], results[4]):
        assert [seq for seq, _ in pulled] == list(range(1, len(acknowledged) + 1))
        assert {mid for _, mid in pulled} == acknowledged


@pytest.fixture
def server_backend() -> str:
    """The sync servers of this module run on PostgreSQL only."""
    return "postgres"


def test_a_database_outage_answers_503_names_no_database_and_is_logged(
    sync_server: Any, postgres: Postgres, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL dropped the server's connections (a restart, a failover; found by
    tests/faults killing it): the client is told to retry (503, which it treats as
    unreachable) without learning the database's name, role or host; the operator's log
    says what happened; and the next attempts get through on fresh connections."""
    remote = HttpRemote(sync_server.url, sync_server.admin_key)
    remote.push([mutation(1)])  # the pool now holds open connections
    name = psycopg.conninfo.conninfo_to_dict(sync_server.storage.path)["dbname"]
    with psycopg.connect(postgres.admin_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
    headers = {"Authorization": f"Bearer {sync_server.admin_key}"}
    answer = httpx.get(f"{sync_server.url}/v1/sync/status", headers=headers, timeout=30)
    assert answer.status_code == 503, answer.text
    error = answer.json()["error"]
    assert error["code"] == "store_error"
    for secret in (name, "cairn_app", "host=", "dbname"):
        assert secret not in answer.text
    assert any(name in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    for _attempt in range(10):  # each connection the pool held fails once, then is replaced
        try:
            assert remote.push([mutation(1), mutation(2)]).stored == 1
            break
        except RemoteUnreachable as exc:
            assert "store_error" in exc.message and name not in exc.message
    else:
        raise AssertionError("the server did not recover from the outage")
    remote.close()
