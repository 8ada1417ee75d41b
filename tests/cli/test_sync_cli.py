"""Three devices (separate CAIRN_HOMEs) syncing through a real `cairn server run` process."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

from .conftest import CAIRN, env_for, in_home, memories_of, new_device, server_process


def test_three_devices_converge_through_a_server_process(
    tmp_path: Path, server: tuple[str, str]
) -> None:
    a, b, c = (new_device(tmp_path, n, server) for n in ("laptop", "desktop", "ci"))
    ci_memory = a(
        "remember", "Deploys run on GitHub Actions", "-k", "decision", "-t", "ci", "--json"
    )
    flags = a("remember", "Feature flags live in LaunchDarkly", "--json")
    old_db = a("remember", "Staging runs Postgres 15", "--topic", "staging-db", "--json")
    doomed = a("remember", "Temporary note about a flaky test", "--json")
    for device in (a, b, c):
        device("sync", "now", "--json")

    b("edit", ci_memory["id"], "Deploys run on GitHub Actions, then Argo CD rolls them out")
    c("remember", "Feature flags live in LaunchDarkly", "-t", "flags")  # tags an existing one
    new_db = c("remember", "Staging runs Postgres 16", "--topic", "staging-db", "--json")
    a("forget", doomed["id"])
    for device in (a, b, c, a, b, c):
        report = device("sync", "now", "--json")
        assert report["pull"]["embedded"] == 0  # pulled memories keep their vectors

    states = [memories_of(d) for d in (a, b, c)]
    assert states[0] == states[1] == states[2]
    contents = {content: tags for _id, content, tags in states[0]}
    assert contents == {
        "Deploys run on GitHub Actions, then Argo CD rolls them out": ["ci"],
        "Feature flags live in LaunchDarkly": ["flags"],
        "Staging runs Postgres 15": [],
        "Staging runs Postgres 16": [],
    }
    assert flags["id"] in {i for i, _c, _t in states[0]}

    hits = c("recall", "how do we deploy to production?", "-n", "1", "--json")
    assert hits[0]["id"] == ci_memory["id"]  # written on A, edited on B, found on C
    db_hits = a("recall", "which postgres version does staging run", "-n", "4", "--json")
    assert db_hits[0]["id"] == new_db["id"]
    [old_hit] = [h for h in db_hits if h["id"] == old_db["id"]]
    assert old_hit["match"]["superseded_by"] == new_db["id"]  # superseded on C, seen on A

    for device in (a, b, c):
        status = device("sync", "status", "--json")
        assert (status["pending"], status["conflicts"], status["reachable"]) == (0, 0, True)
        assert status["dead_letters"] == 0


def test_a_conflict_is_listed_and_resolved_from_the_cli(
    tmp_path: Path, server: tuple[str, str]
) -> None:
    a, b = (new_device(tmp_path, n, server) for n in ("laptop", "desktop"))
    memory = a("remember", "The API allows 100 requests per minute", "--json")
    a("sync", "now")
    b("sync", "now")
    a("edit", memory["id"], "The API allows 200 requests per minute")
    b("edit", memory["id"], "The API allows 500 requests per minute")
    for device in (a, b, a):
        device("sync", "now")
    [conflict] = a("sync", "conflicts", "--json")
    assert b("sync", "conflicts", "--json")[0]["id"] == conflict["id"]
    # The desktop's later edit shows; the laptop's own edit is the version kept beside it.
    assert conflict["current"] == "The API allows 500 requests per minute"
    assert (conflict["current_device_name"], conflict["device_name"]) == ("desktop", "laptop")
    shown = a("sync", "conflicts").stdout
    assert conflict["id"] in shown and "requests per minute" in shown
    assert "written by desktop" in shown and "written by laptop (this device)" in shown
    assert "remote" not in shown and "local" not in shown
    assert "--keep current" in shown and "--keep other" in shown and "--keep both" in shown
    a("sync", "resolve", conflict["id"], "--keep", "other")
    for device in (a, b):
        device("sync", "now")
    assert a("sync", "conflicts", "--json") == [] == b("sync", "conflicts", "--json")
    assert a("show", memory["id"], "--json")["content"] == conflict["revision"]
    assert memories_of(a) == memories_of(b)
    missing = a("sync", "resolve", "nope-nope", "--keep", "current", ok=False)
    assert missing.returncode == 4 and "no open conflict" in missing.stderr


def test_without_sync_status_shows_the_local_state_and_says_sync_is_off(tmp_path: Path) -> None:
    fresh = in_home(tmp_path, "fresh")
    fresh("remember", "The build cache lives in S3", "--json")
    status = fresh("sync", "status", "--json")
    assert (status["configured"], status["pending"], status["remote"]) == (False, 1, None)
    assert status["worker"]["phase"] == "disabled"
    shown = fresh("sync", "status").stdout
    assert "off (not set up on this device" in shown and "cairn sync setup" in shown
    assert "1 change kept on this device" in shown
    stats = fresh("stats", "--json")
    assert (stats["outbox_pending"], stats["sync"]) == (1, "off")
    human = fresh("stats").stdout
    assert "outbox_pending" not in human
    assert "off (1 change kept on this device until `cairn sync setup`)" in human
    well_formed = "cairn_0123456789ab_" + "s" * 43
    bad = fresh(
        "sync", "setup", "--server", "http://127.0.0.1:9", "--api-key", well_formed, ok=False
    )
    assert bad.returncode == 8 and "127.0.0.1:9" in bad.stderr
    assert not (tmp_path / "fresh" / "keys" / "sync.json").exists()


def test_a_malformed_api_key_is_bad_input_that_names_no_header(tmp_path: Path) -> None:
    """The user typed a key, not a header: the message talks about the key, shows none of it
    (it may be a secret pasted wrong) and nothing is saved."""
    fresh = in_home(tmp_path, "fresh")
    pasted = "cairn_0123456789ab_secretpart-cut-short"[:-20] + " trailing words"
    bad = fresh("sync", "setup", "--server", "http://127.0.0.1:9", "--api-key", pasted, ok=False)
    assert bad.returncode == 2, bad.stderr
    assert "is not a Cairn API key" in bad.stderr and "cairn server key create" in bad.stderr
    assert "Authorization" not in bad.stderr and "trailing words" not in bad.stderr
    assert not (tmp_path / "fresh" / "keys" / "sync.json").exists()


def test_status_says_the_server_was_reached_and_refused_a_revoked_key(
    tmp_path: Path, server: tuple[str, str]
) -> None:
    url, _admin = server
    admin_env = {**os.environ, "CAIRN_HOME": str(tmp_path / "server-home")}
    data = ["--data", str(tmp_path / "server-data")]
    made = subprocess.run(
        [CAIRN, "server", "key", "create", "-w", "team", "-n", "laptop", *data, "--json"],
        env=admin_env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = json.loads(made.stdout)
    laptop = in_home(tmp_path, "laptop")
    laptop("sync", "setup", "--server", url, "--api-key", key["key"])
    subprocess.run([CAIRN, "server", "key", "revoke", key["id"], *data], env=admin_env, check=True)
    status = laptop("sync", "status", "--json")
    assert status["reachable"] is True and status["error"]["code"] == "auth_failed"
    assert status["pending"] == 0  # the local part still shows
    shown = laptop("sync", "status").stdout
    assert "unreachable" not in shown
    assert "reached, but it refused this device's API key" in shown and "revoked" in shown
    doctor = laptop("doctor", "--json", ok=False)
    checks = {c["check"]: c for c in doctor["checks"]}
    assert doctor["ok"] is False and checks["remote"]["state"] == "fail"
    assert "revoked" in checks["remote"]["found"]
    assert checks["store"]["state"] == checks["key store"]["state"] == "ok"


def test_doctor_checks_a_healthy_synced_device_line_by_line(
    tmp_path: Path, server: tuple[str, str]
) -> None:
    url, admin = server
    laptop = in_home(tmp_path, "laptop")
    laptop("sync", "setup", "--server", url, "--api-key", admin)
    checked = laptop("doctor")
    names = [line.split()[1] for line in checked.stdout.splitlines()]
    assert names == ["versions", "store", "model", "key", "remote", "clock"]
    assert all(line.split()[0] == "ok" for line in checked.stdout.splitlines()), checked.stdout
    assert "reached, key accepted" in checked.stdout and "the server" in checked.stdout


def test_a_too_short_passphrase_is_bad_input_and_the_minimum_is_said(
    tmp_path: Path, server: tuple[str, str]
) -> None:
    url, key = server
    env = {**env_for(tmp_path, "laptop"), "CAIRN_PASSPHRASE": "short", "CAIRN_API_KEY": key}
    done = subprocess.run(
        [CAIRN, "sync", "setup", "--server", url], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
    assert "at least 8 characters" in done.stderr
    assert not (tmp_path / "laptop" / "keys" / "sync.json").exists()
    help_text = subprocess.run(
        [CAIRN, "sync", "setup", "--help"], env=env, capture_output=True, text=True
    ).stdout
    assert "8 characters" in help_text


def test_devices_join_with_the_passphrase_or_the_recovery_key_and_a_wrong_one_changes_nothing(
    tmp_path: Path, server: tuple[str, str]
) -> None:
    url, key = server
    first = in_home(tmp_path, "first")
    made = first("sync", "setup", "--server", url, "--api-key", key, "--json")
    assert made["created_keyring"] is True and len(made["recovery_key"]) > 50
    assert (
        first("sync", "setup", "--server", url, "--api-key", key, "--json")["recovery_key"] is None
    )
    first("remember", "The VPN config lives in the ops vault", "--json")
    first("sync", "now")

    env = {**os.environ, "CAIRN_HOME": str(tmp_path / "intruder")}
    env.update(CAIRN_PASSPHRASE="not the team passphrase", CAIRN_API_KEY=key)
    subprocess.run([CAIRN, "remember", "a local note"], env=env, check=True, capture_output=True)
    before = (tmp_path / "intruder" / "cairn.db").read_bytes()
    wrong = subprocess.run(
        [CAIRN, "sync", "setup", "--server", url, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 10
    assert json.loads(wrong.stdout)["error"]["code"] == "wrong_passphrase"
    assert "did not unlock" in wrong.stderr
    assert not (tmp_path / "intruder" / "keys" / "sync.json").exists()
    assert (tmp_path / "intruder" / "cairn.db").read_bytes() == before

    env = {**os.environ, "CAIRN_HOME": str(tmp_path / "by-recovery"), "CAIRN_API_KEY": key}
    env.pop("CAIRN_PASSPHRASE", None)
    setup = [CAIRN, "sync", "setup", "--server", url, "--json", "--recovery-key"]
    typo = subprocess.run([*setup, "AAAA-BBBB"], env=env, capture_output=True, text=True)
    assert typo.returncode == 10 and "recovery key" in typo.stderr
    joined = subprocess.run(
        [*setup, made["recovery_key"]], env=env, capture_output=True, text=True, timeout=60
    )
    assert joined.returncode == 0, joined.stderr
    pulled = subprocess.run(
        [CAIRN, "sync", "now", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert json.loads(pulled.stdout)["pull"]["applied"] == 1
    listed = subprocess.run(
        [CAIRN, "list", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert [m["content"] for m in json.loads(listed.stdout)["memories"]] == [
        "The VPN config lives in the ops vault"
    ]


NEW = "the team's new passphrase"


def test_passphrase_change_and_key_rotation_from_the_cli_keep_everything_readable(
    tmp_path: Path, server: tuple[str, str]
) -> None:
    a, b = (new_device(tmp_path, n, server) for n in ("laptop", "desktop"))
    a("remember", "Written before the rotation", "--json")
    a("sync", "now", "--json")
    rotated = a("sync", "rotate-key", "--json")
    assert rotated == {"current_key_id": 2, "revoked_key_ids": [1]}
    # B has not seen the rotation: the server refuses key 1, B re-reads the keyring and re-seals.
    b("remember", "Written on a device that missed the rotation", "--json")
    report = b("sync", "now", "--json")
    assert (report["push"]["pushed"], report["push"]["dead_lettered"]) == (1, 0)
    assert report["pull"]["applied"] == 1

    changed = subprocess.run(
        [CAIRN, "sync", "passphrase", "--json"],
        env={**os.environ, "CAIRN_HOME": str(tmp_path / "laptop"), "CAIRN_NEW_PASSPHRASE": NEW},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout) == {"passphrase_changed": True}
    a("sync", "now", "--json")
    b("remember", "Written after the passphrase changed", "--json")
    b("sync", "now", "--json")  # B keeps working: its master key did not change

    url, key = server
    c = in_home(tmp_path, "ci")
    old = c("sync", "setup", "--server", url, "--api-key", key, ok=False)
    assert old.returncode == 10, old.stderr  # the old passphrase no longer opens the keyring
    env = {**os.environ, "CAIRN_HOME": str(tmp_path / "ci"), "CAIRN_PASSPHRASE": NEW}
    for args in (["sync", "setup", "--server", url, "--api-key", key], ["sync", "now"]):
        done = subprocess.run([CAIRN, *args], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    expected = {
        "Written before the rotation",
        "Written on a device that missed the rotation",
        "Written after the passphrase changed",
    }
    for device in (a, b, c):
        device("sync", "now", "--json")
        assert {content for _id, content, _tags in memories_of(device)} == expected


def test_a_hosted_workspace_syncs_plain_text_without_a_passphrase(tmp_path: Path) -> None:
    with server_process(tmp_path, "hosted") as (url, key, warning):
        assert "NOT end-to-end encrypted" in warning
        devices = []
        for name in ("laptop", "desktop"):
            env = {**os.environ, "CAIRN_HOME": str(tmp_path / name), "CAIRN_API_KEY": key}
            env.pop("CAIRN_PASSPHRASE", None)  # a hosted workspace never asks for one
            setup = subprocess.run(
                [CAIRN, "sync", "setup", "--server", url, "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
            assert setup.returncode == 0, setup.stderr
            made = json.loads(setup.stdout)
            assert (made["mode"], made["recovery_key"], made["key_store"]) == ("hosted", None, None)
            saved = json.loads((tmp_path / name / "keys" / "sync.json").read_text())
            assert saved["mode"] == "hosted" and "master_key" not in saved
            devices.append(in_home(tmp_path, name))
        laptop, desktop = devices
        laptop("remember", "Hosted memories are readable by the server", "--json")
        assert laptop("sync", "now", "--json")["push"]["pushed"] == 1
        assert desktop("sync", "now", "--json")["pull"]["applied"] == 1
        assert [c for _i, c, _t in memories_of(desktop)] == [
            "Hosted memories are readable by the server"
        ]
        refused = desktop("sync", "rotate-key", ok=False)
        assert refused.returncode != 0 and "hosted workspace" in refused.stderr
        server_db = (tmp_path / "server-data" / "server.db").read_bytes()
        server_db += (tmp_path / "server-data" / "server.db-wal").read_bytes()
        assert b"Hosted memories are readable by the server" in server_db  # what hosted means


def test_the_workspace_key_can_live_in_the_os_keyring(
    tmp_path: Path, server: tuple[str, str]
) -> None:
    """CAIRN_KEY_STORE=keyring with a real keyring backend (keyrings.alt's file backend stands
    in for the OS one, which this headless machine lacks): sync.json holds no key."""
    url, key = server
    base = {**os.environ, "CAIRN_HOME": str(tmp_path / "dev"), "CAIRN_API_KEY": key}
    env = {
        **base,
        "CAIRN_PASSPHRASE": "a passphrase the whole team knows",
        "CAIRN_KEY_STORE": "keyring",
        "PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring",
        "XDG_DATA_HOME": str(tmp_path / "os-keyring"),
    }

    def run(*args: str, environ: dict[str, str] = env) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CAIRN, *args], env=environ, capture_output=True, text=True, timeout=60
        )

    setup = run("sync", "setup", "--server", url, "--json")
    assert setup.returncode == 0, setup.stderr
    assert json.loads(setup.stdout)["key_store"] == "os-keyring"
    saved = json.loads((tmp_path / "dev" / "keys" / "sync.json").read_text())
    assert saved["key_store"] == "os-keyring" and "master_key" not in saved
    assert run("remember", "The key is in the keyring").returncode == 0
    synced = run("sync", "now", "--json")
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["push"]["pushed"] == 1

    (tmp_path / "os-keyring" / "python_keyring" / "keyring_pass.cfg").unlink()
    lost = run("sync", "now", "--json")
    assert lost.returncode != 0 and "run `cairn sync setup` again" in lost.stderr

    # Without CAIRN_KEY_STORE, this machine has no OS keyring: the key goes to the 0600 file.
    again = run("sync", "setup", "--server", url, "--json", environ={**env, "CAIRN_KEY_STORE": ""})
    assert json.loads(again.stdout)["key_store"] == "file", again.stderr
    saved = json.loads((tmp_path / "dev" / "keys" / "sync.json").read_text())
    assert saved["key_store"] == "file" and saved["master_key"]
    assert (tmp_path / "dev" / "keys" / "sync.json").stat().st_mode & 0o777 == 0o600


def test_a_quota_refusal_keeps_the_changes_until_the_admin_raises_it(
    tmp_path: Path, server: tuple[str, str]
) -> None:
    """The admin limits the workspace; a device's push over it is refused as quota_exceeded,
    its changes wait, and go through once the quota is raised (`--clear`)."""
    admin_env = {**os.environ, "CAIRN_HOME": str(tmp_path / "server-home")}
    data = str(tmp_path / "server-data")

    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [CAIRN, "server", "workspace", *args, "--data", data],
            env=admin_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done

    a = new_device(tmp_path, "laptop", server)
    a("remember", "The first memory fits", "--json")
    a("sync", "now", "--json")
    limited = json.loads(admin("set-quota", "team", "--max-mutations", "1", "--json").stdout)
    assert limited["max_mutations"] == 1 and limited["mutations"] == 1
    a("remember", "The second memory is over the quota", "--json")
    refused = a("sync", "now", ok=False)
    assert refused.returncode == 8 and "quota" in refused.stderr, refused.stderr
    assert a("sync", "status", "--json")["pending"] == 1
    assert "limited to changes 1" in admin("set-quota", "team", "--max-bytes", "100000").stdout
    admin("set-quota", "team", "--clear")
    assert a("sync", "now", "--json")["push"]["stored"] == 1
    assert a("sync", "status", "--json")["pending"] == 0
    listed = json.loads(admin("list", "--json").stdout)
    assert listed[0]["quota"] == {"max_mutations": None, "max_bytes": None}


def test_sync_now_reports_refused_changes_and_fails_when_nothing_could_be_sent(
    tmp_path: Path,
) -> None:
    # A server taking request bodies of 4 KiB at most: one change over that is refused whole.
    with server_process(tmp_path, "e2e", "--max-body", "4096") as (url, key, _warning):
        a = new_device(tmp_path, "laptop", (url, key))
        a("remember", "A signed release manifest, quoted in full: " + secrets.token_hex(3000))
        refused = subprocess.run(
            [CAIRN, "sync", "now", "--json"],
            env=env_for(tmp_path, "laptop"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode == 8, refused.stderr
        report = json.loads(refused.stdout)
        assert report["push"]["dead_lettered"] == 1
        assert report["push"]["dead_letter_reasons"] == {"payload_too_large": 1}
        assert report["error"]["code"] == "invalid_mutation"
        text = a("sync", "now", ok=False)
        assert text.returncode == 0  # nothing new was refused, nothing to send
        a("remember", "A short note that fits")
        a("remember", "Another manifest: " + secrets.token_hex(3000))
        mixed = a("sync", "now", ok=False)
        assert mixed.returncode == 0, mixed.stderr  # one change was sent
        assert "1 change refused by the remote (payload_too_large: 1)" in mixed.stdout
        assert "cairn sync dead-letters" in mixed.stdout
        again = a("sync", "now", ok=False)
        assert again.returncode == 0 and "refused" not in again.stdout
