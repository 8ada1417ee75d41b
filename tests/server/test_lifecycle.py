"""A workspace's lifecycle on each storage backend: deleted whole, with every row it owned, while
the server's own audit log keeps the deletion and other workspaces keep everything."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import conninfo

from cairn.errors import AuthFailed, NotFound
from cairn.model import Filters
from cairn.protocol import HOSTED
from cairn.remotes.http import HttpRemote
from cairn.replication import RelationState
from cairn.search.hybrid import query_terms
from cairn.server import keys
from cairn.server.context import ServerSettings
from cairn.server.storage import INDEX_DIM, ServerStorage
from cairn.server.storage.postgres import PostgresStorage
from cairn.server.storage.sqlite import SqliteStorage

from ..conftest import Postgres, SyncServer
from .test_hosted_ranking import indexed
from .test_server_cli import CAIRN, cairn, env, ok_json
from .test_storage import mutation

__all__ = ["env"]  # the fixture: a fresh CAIRN_HOME, on each backend

NOW = 1_700_000_000_000
DOOMED, KEPT = "ws-doomed-5c1f9e", "ws-kept-8a42d7"


class Database:
    """A storage and a way to read every row of every table in it, as its owner would."""

    def __init__(self, storage: ServerStorage, rows: Any, tables: Any) -> None:
        self.storage = storage
        self.rows = rows  # table -> its rows, each as text
        self.tables = tables  # every table of the schema

    def everything(self) -> dict[str, list[str]]:
        return {table: sorted(self.rows(table)) for table in self.tables()}


@pytest.fixture
def database(
    tmp_path: Path, server_backend: str, request: pytest.FixtureRequest
) -> Iterator[Database]:
    if server_backend == "sqlite":
        path = tmp_path / "server.db"
        storage: ServerStorage = SqliteStorage(path)
        raw = sqlite3.connect(path)

        def sqlite_tables() -> list[str]:
            query = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            return [name for (name,) in raw.execute(query)]

        def sqlite_rows(table: str) -> list[str]:
            return [repr(row) for row in raw.execute(f'SELECT * FROM "{table}"')]

        yield Database(storage, sqlite_rows, sqlite_tables)
        raw.close()
    else:
        pg: Postgres = request.getfixturevalue("postgres")
        url = pg.new_database()
        storage = PostgresStorage(url)
        # The superuser reads past row-level security: a row no policy shows is still found.
        dbname = conninfo.conninfo_to_dict(url)["dbname"]
        info = {**conninfo.conninfo_to_dict(pg.admin_url), "dbname": dbname}
        owner = psycopg.connect(conninfo.make_conninfo("", **info), autocommit=True)

        def pg_tables() -> list[str]:
            query = (
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
                "AND table_type = 'BASE TABLE' ORDER BY table_name"
            )
            return [name for (name,) in owner.execute(query)]

        def pg_rows(table: str) -> list[str]:
            return [text for (text,) in owner.execute(f'SELECT r::text FROM "{table}" r')]

        yield Database(storage, pg_rows, pg_tables)
        owner.close()
    storage.close()


def fill(storage: ServerStorage, workspace_id: str, name: str) -> str:
    """A hosted workspace with a row in every table a workspace can have; an API key's token."""
    storage.create_workspace(workspace_id, name, NOW, HOSTED)
    _, token = keys.issue(storage, workspace_id, "laptop", ["admin"], NOW)
    storage.register_device(workspace_id, "dev-a", "laptop", NOW)
    storage.push(workspace_id, [mutation(n) for n in range(5)], "dev-a", NOW, key_id="k")
    storage.record_pull(workspace_id, "k", 5, NOW)
    storage.put_keyring(workspace_id, b"ring-1", None)
    storage.put_keyring(workspace_id, b"ring-2", 1, revoked=[1])
    storage.audit(workspace_id, None, "quota_set", {"by": "cli"}, NOW)
    vector = np.ones(INDEX_DIM, dtype="<f4")
    memories = [indexed(f"m{n}", f"deploy the pipeline step {n}", vector) for n in range(3)]
    memories.append(indexed("gone", "removed", deleted=True))
    relation = RelationState("m0", "m1", "supersedes", NOW, False, f"{NOW:013d}-0000-laptop")
    assert storage.put_index(workspace_id, 0, 5, memories, [relation])
    storage.record_recall(workspace_id, "k", {"query": "deploy"}, NOW)
    return token


def mentions(rows: list[str], *needles: str) -> list[str]:
    return [row for row in rows if any(needle in row for needle in needles)]


def test_a_deleted_workspace_leaves_no_row_in_any_table(database: Database) -> None:
    storage = database.storage
    fill(storage, DOOMED, "doomed-team")
    fill(storage, KEPT, "kept-team")
    before = database.everything()
    every_table = [t for t, rows in before.items() if mentions(rows, DOOMED)]
    assert {"mutations", "devices", "api_keys", "keyring_versions", "hosted_memories"} <= set(
        every_table
    )

    deleted = storage.delete_workspace(DOOMED, NOW + 1, by="cli")

    assert deleted["mutations"] == 5 and deleted["api_keys"] == 1 and deleted["devices"] == 1
    after = database.everything()
    for table, rows in after.items():
        if table == "server_audit":  # the server's own log, which outlives the workspace
            continue
        assert mentions(rows, DOOMED, "doomed-team") == [], table
        kept = mentions(before[table], KEPT)
        assert mentions(rows, KEPT) == kept, table
    (event,) = storage.server_events(10)
    assert (event.action, event.workspace_id, event.workspace_name) == (
        "workspace_deleted",
        DOOMED,
        "doomed-team",
    )
    assert event.detail["rows"]["mutations"] == 5 and event.detail["by"] == "cli"
    with pytest.raises(NotFound):
        storage.workspace("doomed-team")
    assert [w.id for w in storage.workspaces()] == [KEPT]
    # The kept workspace still syncs and searches as before.
    assert [m.seq for m in storage.pull(KEPT, 0, 100, None).mutations] == [1, 2, 3, 4, 5]
    found = storage.keyword(KEPT, query_terms("pipeline"), Filters(), 10)
    assert sorted(m for m, _ in found) == ["m0", "m1", "m2"]
    assert len(storage.nearest(KEPT, np.ones(INDEX_DIM, dtype="<f4").tobytes(), Filters(), 10)) == 3
    assert storage.push(KEPT, [mutation(9)], "dev-a", NOW + 2).last_seq == 6
    if isinstance(storage, SqliteStorage):  # the keyword index matches its rows exactly
        with sqlite3.connect(storage.path) as raw:
            raw.execute("INSERT INTO hosted_fts(hosted_fts) VALUES ('integrity-check')")


def test_deleting_an_unknown_workspace_changes_nothing(database: Database) -> None:
    storage = database.storage
    fill(storage, KEPT, "kept-team")
    before = database.everything()
    with pytest.raises(NotFound, match="no workspace"):
        storage.delete_workspace("ws-nobody", NOW, by="cli")
    assert database.everything() == before
    assert storage.server_events(10) == []


def test_a_deleted_workspaces_keys_get_401(
    sync_server_factory: Callable[..., SyncServer],
) -> None:
    """Deleted straight in the storage, with no news to the server (the CLI sends some, which
    drops the keys from every server's cache): a server that caches no keys refuses them at
    once; a caching one within its `key_cache_ttl`."""
    sync_server = sync_server_factory(ServerSettings(rate_limit=0, key_cache_ttl=0))
    workspace, token = sync_server.new_workspace("doomed")
    remote = HttpRemote(sync_server.url, token, device_id="dev-a")
    assert remote.push([mutation(1, "dev-a")]).stored == 1
    kept = HttpRemote(sync_server.url, sync_server.admin_key, device_id="dev-b")
    assert kept.push([mutation(1, "dev-b")]).stored == 1

    sync_server.storage.delete_workspace(workspace.id, NOW, by="cli")

    with pytest.raises(AuthFailed):
        remote.pull(None)
    with pytest.raises(AuthFailed):
        remote.push([mutation(2, "dev-a")])
    assert [m.seq for m in kept.pull(None).mutations] == [1]
    remote.close()
    kept.close()


def asked(env: dict[str, str], answers: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CAIRN, "server", *args], env=env, input=answers, capture_output=True, text=True, timeout=60
    )


def test_the_cli_asks_twice_then_deletes_and_the_history_keeps_it(env: dict[str, str]) -> None:
    doomed = ok_json(env, "workspace", "create", "doomed")
    ok_json(env, "workspace", "create", "kept")
    assert isinstance(doomed, dict)

    declined = asked(env, "n\n", "workspace", "delete", "doomed")
    mistyped = asked(env, "y\nkept\n", "workspace", "delete", "doomed")
    unknown = cairn(env, "workspace", "delete", "nobody", "--yes")
    assert declined.returncode != 0 and "cannot be undone" in declined.stderr
    assert mistyped.returncode != 0 and "nothing was deleted" in mistyped.stderr
    assert unknown.returncode != 0 and "no workspace named 'nobody'" in unknown.stderr
    listed = ok_json(env, "workspace", "list")
    assert isinstance(listed, list) and [w["name"] for w in listed] == ["doomed", "kept"]
    assert ok_json(env, "workspace", "history") == []

    confirmed = asked(env, "y\ndoomed\n", "workspace", "delete", "doomed")
    assert confirmed.returncode == 0, confirmed.stderr
    assert f"deleted workspace doomed ({doomed['id']})" in confirmed.stdout
    listed = ok_json(env, "workspace", "list")
    assert isinstance(listed, list) and [w["name"] for w in listed] == ["kept"]
    again = ok_json(env, "workspace", "delete", "kept", "--yes")
    assert isinstance(again, dict) and again["deleted"]["api_keys"] == 1
    history = ok_json(env, "workspace", "history")
    assert isinstance(history, list)
    assert [(e["action"], e["workspace"]) for e in history] == [
        ("workspace_deleted", "kept"),
        ("workspace_deleted", "doomed"),
    ]
    assert history[1]["workspace_id"] == doomed["id"]


def test_the_cli_exports_and_imports_a_workspace(env: dict[str, str], tmp_path: Path) -> None:
    made = ok_json(env, "workspace", "create", "team")
    assert isinstance(made, dict)
    file = tmp_path / "team.jsonl"
    out = ok_json(env, "workspace", "export", "team", "--out", str(file))
    assert isinstance(out, dict) and out["lines"] == 2  # a header and the end line
    elsewhere = {k: v for k, v in env.items() if k != "CAIRN_SERVER_DB"}
    other = ["--data", str(tmp_path / "other")]
    done = ok_json(elsewhere, "workspace", "import", str(file), *other)
    assert done == {"workspace": "team", "id": made["id"], "keyrings": 0, "devices": 0} | {
        "mutations": 0
    }
    again = cairn(elsewhere, "workspace", "import", str(file), *other)
    assert again.returncode != 0 and "already has a workspace" in again.stderr
    missing = cairn(elsewhere, "workspace", "import", str(tmp_path / "nope.jsonl"), *other)
    assert missing.returncode != 0 and "cannot read" in missing.stderr
    history = ok_json(elsewhere, "workspace", "history", *other)
    assert isinstance(history, list) and [e["action"] for e in history] == ["workspace_imported"]
