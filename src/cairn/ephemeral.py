"""Ephemeral devices: a throwaway store joined to a workspace for one command, then gone.

For CI jobs and short-lived machines: a fresh home in a temporary folder (its keys in a 0600
file there, never the OS keyring) joins the workspace, pulls it, runs the command with
``CAIRN_HOME`` pointing at it (so ``cairn recall``, ``cairn remember`` and ``cairn mcp`` in it
use that store), pushes what the command remembered, removes its device record from the
remote and deletes the folder. If the final push fails, nothing is deleted: the folder (and
what it holds that the remote lacks) stays, and the error says where.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cairn import config, wiring
from cairn.errors import CairnError, InvalidInput, SyncError

PASSPHRASE_ENV = "CAIRN_PASSPHRASE"


@dataclass
class Report:
    """What an ephemeral device did, for the CLI's report (``--json``)."""

    device_id: str = ""
    device_name: str = ""
    pulled: int = 0
    pushed: int = 0
    exit_code: int = 0
    removed: bool = False
    kept: str | None = None
    """The folder left behind when the final push failed (else None: deleted)."""
    steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "steps"}


def run(
    url: str,
    command: Sequence[str],
    environ: Mapping[str, str],
    *,
    api_key: str | None = None,
    recovery_key: str | None = None,
    name: str | None = None,
    say: Callable[[str], None] = lambda _line: None,
) -> Report:
    """Join, pull, run ``command`` (none: only join and pull, to measure), push, leave."""
    if not command:
        raise InvalidInput("give the command to run after --, e.g. -- cairn recall 'deploys'")
    home = Path(tempfile.mkdtemp(prefix="cairn-ephemeral-"))
    env = {**environ, "CAIRN_HOME": str(home), "CAIRN_KEY_STORE": "file"}
    env.pop("CAIRN_DB", None)
    settings = config.load(env)
    report = Report(device_name=name or f"ephemeral {socket.gethostname()}"[:100])
    try:
        with wiring.build(settings) as store:
            joined = wiring.setup_sync(
                settings,
                store,
                url,
                passphrase=_passphrase(environ),
                recovery_key=recovery_key,
                api_key=api_key,
                device_name=report.device_name,
            )
            report.device_id = joined.device_id
            report.pulled = _count(wiring.sync_now(config.reload(settings), store, "pull"))
        say(f"joined as {report.device_name}; pulled {_changes(report.pulled)} into {home}")
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)  # nothing of the workspace is held only here
        raise
    report.exit_code = subprocess.run(list(command), env=env, check=False).returncode
    try:
        with wiring.build(settings) as store:
            report.pushed = _count(
                wiring.sync_now(config.reload(settings), store, "push"), "pushed"
            )
            left = wiring.sync_status(config.reload(settings), store)
            if left["pending"] or left["dead_letters"]:
                raise SyncError(
                    f"{left['pending']} changes are still waiting and {left['dead_letters']} "
                    "were refused (`cairn sync dead-letters` shows why)"
                )
    except CairnError as exc:
        report.kept = str(home)
        raise SyncError(
            f"the final push failed, so the ephemeral store is kept at {home} ({exc.message}); "
            f"run `CAIRN_HOME={home} cairn sync push` once the remote is back, then delete it"
        ) from exc
    remote = wiring.open_remote(url, api_key, report.device_id)
    try:
        remote.unregister_device(report.device_id)
        report.removed = True
    finally:
        remote.close()
        shutil.rmtree(home, ignore_errors=True)
    say(f"pushed {_changes(report.pushed)}; device removed, {home} deleted")
    return report


def _passphrase(environ: Mapping[str, str]) -> Callable[[bool], str]:
    def passphrase(creating: bool) -> str:
        if creating:
            raise InvalidInput(
                "an ephemeral device joins a workspace that exists; this remote has none yet "
                "(make it with `cairn sync setup` on a lasting device)"
            )
        if not environ.get(PASSPHRASE_ENV):
            raise InvalidInput(
                f"the workspace is end-to-end encrypted: set {PASSPHRASE_ENV} (from a CI "
                "secret) or pass --recovery-key"
            )
        return environ[PASSPHRASE_ENV]

    return passphrase


def _count(report: Mapping[str, Mapping[str, Any]], key: str = "applied") -> int:
    return sum(int(step.get(key, 0)) for step in report.values())


def _changes(n: int) -> str:
    return f"{n} change" if n == 1 else f"{n} changes"
