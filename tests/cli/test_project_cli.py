"""`cairn project`: the projects a store holds, and moving memories from one to another."""

from __future__ import annotations

from pathlib import Path

from .conftest import in_home


def test_rename_moves_memories_filed_under_a_folder_name_and_the_move_syncs(
    tmp_path: Path,
) -> None:
    """Before projects were named by the origin remote, a clone in `alice/` filed its memories
    under `alice`: one rename moves them into the repository's project, joins the topic chains,
    merges identical memories, and every device follows."""
    folder = tmp_path / "shared"
    folder.mkdir()
    laptop, desktop = in_home(tmp_path, "laptop"), in_home(tmp_path, "desktop")
    for name, run in (("laptop", laptop), ("desktop", desktop)):
        run("sync", "setup", "--remote", folder.as_uri(), "--name", name)
    old_db = "Staging runs Postgres 15"
    laptop("remember", old_db, "-p", "alice", "--topic", "staging-db")
    laptop("remember", "Deploys are blue-green", "-p", "alice", "-t", "deploy")
    laptop("remember", "Staging runs Postgres 16", "-p", "acme/shop", "--topic", "staging-db")
    laptop("remember", "Deploys are blue-green", "-p", "acme/shop")
    laptop("sync", "now")

    listed = laptop("project", "list", "--json")
    assert listed == [{"project": "acme/shop", "memories": 2}, {"project": "alice", "memories": 2}]
    report = laptop("project", "rename", "alice", "acme/shop", "--json")
    assert report == {"from": "alice", "to": "acme/shop", "renamed": 2, "duplicates_merged": 1}
    laptop("sync", "now")
    desktop("sync", "now")

    for run in (laptop, desktop):
        assert run("list", "-p", "alice", "--json")["total"] == 0
        moved = run("list", "-p", "acme/shop", "--json")["memories"]
        assert sorted((m["content"], m["tags"]) for m in moved) == [
            ("Deploys are blue-green", ["deploy"]),
            (old_db, []),
            ("Staging runs Postgres 16", []),
        ]
        hits = run("recall", "which postgres does staging run?", "-p", "acme/shop", "--json")
        assert hits[0]["content"] == "Staging runs Postgres 16"
        [old] = [h for h in hits if h["content"] == old_db]
        assert old["match"]["superseded_by"] == hits[0]["id"]
    missing = laptop("project", "rename", "alice", "acme/shop", ok=False)
    assert missing.returncode == 4 and "no memory is in project 'alice'" in missing.stderr
