"""`cairn sync` through storage the user owns, as a user runs it: an S3 bucket (moto's server),
a folder, and a git repository shared by a team; each device is its own `cairn` process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import obstore
import pytest
from obstore.store import LocalStore, S3Store

from ..conftest import S3Server
from .conftest import CAIRN, Device, env_for, memories_of

SECRETS = ["orchid", "blue-green", "payments-service", "alpha-laptop", "beta-desktop"]


def device(tmp_path: Path, name: str, cwd: Path | None = None, **extra: str) -> Device:
    env = {**env_for(tmp_path, name), **extra}

    def run(*args: str, ok: bool = True) -> Any:
        result = subprocess.run(
            [CAIRN, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=cwd or tmp_path,
        )
        if ok:
            assert result.returncode == 0, f"cairn {' '.join(args)}: {result.stderr}"
        return json.loads(result.stdout) if "--json" in args and result.stdout else result

    return run


def every_object(store: Any) -> dict[str, bytes]:
    return {
        str(item["path"]): bytes(obstore.get(store, item["path"]).bytes())
        for item in obstore.list(store).collect()
    }


def assert_zero_knowledge(objects: dict[str, bytes]) -> None:
    """Names and sizes are all the storage learns: no content, tag, project or device name."""
    assert objects, "nothing was stored"
    every_byte = b"".join(objects.values()) + "".join(objects).encode()
    for secret in SECRETS:
        assert secret.encode() not in every_byte, secret


@pytest.fixture
def bucket(s3_server: S3Server) -> Iterator[tuple[str, dict[str, str], Any]]:
    """(s3:// URL, environment for a device, obstore store to inspect the bucket)."""
    name = s3_server.new_bucket()
    creds = s3_server.env()
    inspect = S3Store(
        name,
        endpoint=s3_server.endpoint,
        access_key_id=creds["AWS_ACCESS_KEY_ID"],
        secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
        region=creds["AWS_DEFAULT_REGION"],
        client_options={"allow_http": True},
    )
    yield f"s3://{name}/team-memory", creds, inspect


def test_two_devices_sync_through_an_s3_bucket_that_sees_ciphertext_only(
    tmp_path: Path, s3_server: S3Server, bucket: tuple[str, dict[str, str], Any]
) -> None:
    url, creds, inspect = bucket
    alpha = device(tmp_path, "alpha", **creds)  # credentials from AWS_* variables
    profiles = tmp_path / "aws-credentials"  # and from a named profile, as ~/.aws holds them
    profiles.write_text(
        f"[team]\naws_access_key_id = {creds['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {creds['AWS_SECRET_ACCESS_KEY']}\n",
        encoding="utf-8",
    )
    beta = device(
        tmp_path,
        "beta",
        AWS_SHARED_CREDENTIALS_FILE=str(profiles),
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_PROFILE="team",
        AWS_DEFAULT_REGION=creds["AWS_DEFAULT_REGION"],
    )
    endpoint = ["--endpoint-url", s3_server.endpoint]
    made = alpha("sync", "setup", "--remote", url, *endpoint, "--name", "alpha-laptop", "--json")
    assert made["created_keyring"] and made["remote"] == url
    alpha("remember", "The orchid release ships blue-green", "--tag", "payments-service")
    assert alpha("sync", "now", "--json")["push"]["stored"] == 1

    beta("sync", "setup", "--remote", url, *endpoint, "--name", "beta-desktop", "--json")
    assert beta("sync", "now", "--json")["pull"]["applied"] == 1
    hits = beta("recall", "how does the orchid release ship?", "--json")
    assert hits[0]["content"] == "The orchid release ships blue-green"
    beta("remember", "Rollbacks of orchid take five minutes", "--tag", "payments-service")
    beta("sync", "now")
    alpha("sync", "now")
    assert memories_of(alpha) == memories_of(beta)
    assert len(memories_of(alpha)) == 2

    status = alpha("sync", "status", "--json")
    assert status["remote_status"]["mutations"] == 2
    assert status["remote_status"]["skipped_objects"] == {}
    objects = every_object(inspect)
    assert all(p.startswith("team-memory/") for p in objects)
    assert_zero_knowledge(objects)


def test_bad_remote_urls_are_refused_and_change_nothing(tmp_path: Path) -> None:
    alpha = device(tmp_path, "alpha")
    for args, message in [
        (["--remote", "ftp://example.com/x"], "cannot sync with"),
        (["--remote", "file://relative/folder"], "file:///absolute/path"),
        (["--remote", (tmp_path / "f").as_uri(), "--endpoint-url", "http://x"], "s3://"),
        (["--git"], "not inside a git repository"),
        ([], "--remote URL"),
    ]:
        result = alpha("sync", "setup", *args, ok=False)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    assert not (tmp_path / "alpha" / "keys" / "sync.json").exists()
    assert not (tmp_path / "f").exists()
    anonymous = device(
        tmp_path,
        "anonymous",
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    result = anonymous("sync", "setup", "--remote", "s3://bucket/cairn", ok=False)
    assert result.returncode == 9 and "no AWS credentials" in result.stderr, result.stderr


def test_a_folder_remote_compacts_and_a_new_device_reads_the_snapshot(tmp_path: Path) -> None:
    folder = tmp_path / "Dropbox" / "cairn"
    folder.mkdir(parents=True)
    alpha = device(tmp_path, "alpha")
    beta = device(tmp_path, "beta")
    alpha("sync", "setup", "--remote", folder.as_uri(), "--name", "alpha-laptop")
    beta("sync", "setup", "--remote", folder.as_uri(), "--name", "beta-desktop")
    for n in range(3):
        alpha("remember", f"orchid fact number {n}", "--tag", "payments-service")
        alpha("sync", "now")
        beta("remember", f"blue-green fact number {n}")
        beta("sync", "now")
    for run in (alpha, beta, alpha, beta):  # each reads the others, then says how far it read
        run("sync", "now")
    report = alpha("sync", "compact", "--json")
    assert report["new_snapshot"] and report["snapshot_mutations"] == 6
    assert report["removed_batches"] == 6 and report["kept_batches"] == 0
    assert not [p for p in (folder / "log").rglob("*") if p.is_file()]  # (device ids: folders)
    assert alpha("sync", "compact", "--json")["new_snapshot"] is False

    gamma = device(tmp_path, "gamma")
    gamma("sync", "setup", "--remote", folder.as_uri(), "--name", "gamma")
    assert gamma("sync", "now", "--json")["pull"]["applied"] == 6
    assert memories_of(gamma) == memories_of(alpha) == memories_of(beta)
    assert_zero_knowledge(every_object(LocalStore(folder)))
    text = alpha("sync", "compact").stdout
    assert "kept snapshot 1" in text


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def test_a_team_syncs_through_a_git_repository_without_merge_conflicts(tmp_path: Path) -> None:
    """The README's team workflow: sync now, commit, pull (a merge), push, sync now."""
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    clones = {}
    for name in ("alice", "bob"):
        clones[name] = tmp_path / f"{name}-repo"
        git(tmp_path, "clone", "-q", str(origin), str(clones[name]))
    alice = device(tmp_path, "alice", cwd=clones["alice"])
    bob = device(tmp_path, "bob", cwd=clones["bob"])

    made = alice("sync", "setup", "--git", "--name", "alice-laptop", "--json")
    assert made["remote"] == (clones["alice"] / ".cairn").as_uri()
    alice("remember", "The orchid service deploys blue-green")
    alice("sync", "now")
    git(clones["alice"], "add", ".cairn")
    git(clones["alice"], "commit", "-qm", "memories")
    git(clones["alice"], "push", "-q", "origin", "main")

    git(clones["bob"], "pull", "-q", "origin", "main")
    bob("sync", "setup", "--git", "--name", "bob-desktop")
    assert bob("sync", "now", "--json")["pull"]["applied"] == 1

    # Both write at once, then commit; bob's pull merges alice's new files into his.
    alice("remember", "orchid rollbacks take five minutes")
    bob("remember", "payments-service owns the orchid queue")
    for name, run in (("alice", alice), ("bob", bob)):
        run("sync", "now")
        git(clones[name], "add", ".cairn")
        git(clones[name], "commit", "-qm", f"{name}'s memories")
    git(clones["alice"], "push", "-q", "origin", "main")
    git(clones["bob"], "pull", "-q", "--no-rebase", "origin", "main")  # a merge: no conflicts
    bob("sync", "now")
    git(clones["bob"], "add", ".cairn")
    git(clones["bob"], "commit", "-qm", "bob read alice", "--allow-empty")
    git(clones["bob"], "push", "-q", "origin", "main")
    git(clones["alice"], "pull", "-q", "--no-rebase", "origin", "main")
    alice("sync", "now")

    assert len(memories_of(alice)) == 3
    assert memories_of(alice) == memories_of(bob)
    for clone in clones.values():  # no merge ever stopped on a conflict
        assert not any(line[:2] in ("UU", "AA") for line in git(clone, "status", "--porcelain"))
    # One repository is one project, whatever each clone's folder is called (the origin's name).
    projects = {m["project"] for run in (alice, bob) for m in run("list", "--json")["memories"]}
    assert projects == {"origin"}
    # Once what a sync wrote is committed, a sync that brings nothing new changes no file.
    for name, run in (("alice", alice), ("bob", bob)):
        git(clones[name], "add", "-A", ".cairn")
        git(clones[name], "commit", "-qm", "read positions", "--allow-empty")
        assert run("sync", "now", "--json")["pull"]["received"] == 0
        assert git(clones[name], "status", "--porcelain") == ""
    tracked = git(clones["alice"], "ls-files", ".cairn").split()
    assert ".cairn/.gitattributes" in tracked and ".cairn/cairn.json" in tracked
    assert_zero_knowledge(every_object(LocalStore(clones["alice"] / ".cairn")))


def test_a_folder_that_does_not_exist_is_refused_unless_create_and_plain_paths_work(
    tmp_path: Path,
) -> None:
    alpha = device(tmp_path, "alpha")
    typo = tmp_path / "typo" / "path"
    refused = alpha("sync", "setup", "--remote", typo.as_uri(), ok=False)
    assert refused.returncode == 2, refused.stderr
    assert "does not exist" in refused.stderr and "--create" in refused.stderr
    assert not (tmp_path / "typo").exists()
    assert not (tmp_path / "alpha" / "keys" / "sync.json").exists()
    assert not (tmp_path / "alpha" / "cairn.db").exists()  # refused before the store opens

    made = alpha("sync", "setup", "--remote", str(typo), "--create", "--name", "alpha")
    assert f"made the folder {typo} for a new workspace" in made.stdout
    assert "recovery key" in made.stdout
    beta = device(tmp_path, "beta")  # runs in tmp_path: a relative path names the same folder
    joined = beta("sync", "setup", "--remote", "./typo/path", "--name", "beta", "--json")
    assert joined["remote"] == typo.as_uri() and joined["created_keyring"] is False

    shutil.rmtree(typo)  # unmounted, moved: syncing waits for it, never makes a new one
    gone = alpha("sync", "now", ok=False)
    assert gone.returncode == 8 and "does not exist" in gone.stderr
    assert not typo.exists()


def test_setup_and_sync_reports_read_as_sentences(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    alpha = device(tmp_path, "alpha")
    made = alpha("sync", "setup", "--remote", folder.as_uri(), "--name", "alpha").stdout
    assert "no changes to send" in made and "change(s)" not in made
    assert "with either, a new device can join; without either" in made
    synced = alpha("sync", "now").stdout.splitlines()
    assert synced == [
        "push: nothing to send",
        "pull: nothing new",
        "push after pull: nothing to send",
    ]


def test_setup_refuses_storage_that_ignores_put_if_absent_and_splits_nothing(
    tmp_path: Path, s3_without_conditional_writes: S3Server
) -> None:
    faulty = s3_without_conditional_writes
    name = faulty.new_bucket()
    endpoint = ["--endpoint-url", faulty.endpoint]
    for who in ("alpha", "beta"):  # two devices setting up the same bucket
        run = device(tmp_path, who, **faulty.env())
        made = run("sync", "setup", "--remote", f"s3://{name}", *endpoint, ok=False)
        assert made.returncode == 8, made.stderr
        assert "conditional writes" in made.stderr and "If-None-Match" in made.stderr
        assert not (tmp_path / who / "keys" / "sync.json").exists()  # nothing saved
    assert every_object(faulty.bucket(name)) == {}  # no keyring to be replaced


def test_a_missing_bucket_is_said_in_a_sentence_not_raw_xml(
    tmp_path: Path, s3_server: S3Server
) -> None:
    run = device(tmp_path, "alpha", **s3_server.env())
    endpoint = ["--endpoint-url", s3_server.endpoint]
    missing = run("sync", "setup", "--remote", "s3://no-such-bucket/team", *endpoint, ok=False)
    assert missing.returncode == 8, missing.stderr
    assert "NoSuchBucket: The specified bucket does not exist" in missing.stderr
    assert "check the bucket's name" in missing.stderr
    assert "<?xml" not in missing.stderr and "<Error>" not in missing.stderr
    assert not (tmp_path / "alpha" / "keys" / "sync.json").exists()
