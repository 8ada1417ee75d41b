"""`cairn sync ephemeral`: a CI job's throwaway device against a real `cairn server run`."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx

from cairn.server import seen

from .conftest import CAIRN, env_for, memories_of, new_device


def ephemeral(
    tmp_path: Path, server: tuple[str, str], *command: str, **env: str
) -> subprocess.CompletedProcess[str]:
    url, key = server
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    environ = {**env_for(tmp_path, "ci"), "CAIRN_API_KEY": key, "TMPDIR": str(scratch), **env}
    environ["PATH"] = f"{Path(CAIRN).parent}:{environ.get('PATH', '')}"  # `cairn` in the job
    return subprocess.run(
        [CAIRN, "sync", "ephemeral", url, "--name", "ci-job", "--json", "--", *command],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )


def test_a_ci_job_recalls_remembers_and_leaves_nothing_behind(
    tmp_path: Path, server: tuple[str, str]
) -> None:
    laptop = new_device(tmp_path, "laptop", server)
    laptop("remember", "Integration tests need the docker compose stack up", "-k", "fact")
    laptop("sync", "now")
    script = (
        'cairn recall "what do integration tests need?" -n 1 --json > found.json && '
        'cairn remember "The CI cache key includes the lockfile hash" -k gotcha'
    )
    done = ephemeral(tmp_path, server, "bash", "-c", script)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stderr.splitlines()[-1])
    assert (report["pulled"], report["pushed"], report["exit_code"]) == (1, 1, 0)
    assert report["removed"] and report["kept"] is None
    found = json.loads((tmp_path / "found.json").read_text())
    assert found[0]["content"] == "Integration tests need the docker compose stack up"
    # What the job learned reached the laptop; the job's device and its keys are gone.
    laptop("sync", "now")
    contents = {content for _id, content, _tags in memories_of(laptop)}
    assert "The CI cache key includes the lockfile hash" in contents
    assert list((tmp_path / "tmp").glob("cairn-ephemeral-*")) == []
    assert device_names(server) == ["laptop"]


def device_names(server: tuple[str, str]) -> list[str]:
    url, key = server
    listed = httpx.get(f"{url}/v1/devices", headers={"Authorization": f"Bearer {key}"})
    return [d["name"] for d in listed.json()["devices"]]


def test_the_command_s_exit_code_is_the_exit_code(tmp_path: Path, server: tuple[str, str]) -> None:
    new_device(tmp_path, "laptop", server)
    done = ephemeral(tmp_path, server, "bash", "-c", "exit 3")
    assert done.returncode == 3
    assert json.loads(done.stderr.splitlines()[-1])["removed"]
    time.sleep(seen.FIRST + 0.5)  # past the server's batched last-seen: the pull must not return
    assert device_names(server) == ["laptop"]


def test_a_wrong_passphrase_joins_nothing_and_leaves_nothing(
    tmp_path: Path, server: tuple[str, str]
) -> None:
    new_device(tmp_path, "laptop", server)
    done = ephemeral(tmp_path, server, "true", CAIRN_PASSPHRASE="not the team's passphrase")
    assert done.returncode != 0
    assert "passphrase" in done.stderr and "Traceback" not in done.stderr
    assert list((tmp_path / "tmp").glob("cairn-ephemeral-*")) == []
    assert not (tmp_path / "ci").exists()
