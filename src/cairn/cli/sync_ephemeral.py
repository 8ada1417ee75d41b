"""`cairn sync ephemeral`: run one command on a throwaway device joined to a workspace."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer

from cairn import ephemeral


def run(
    remote: Annotated[
        str,
        typer.Argument(
            help="The workspace's remote: a sync server (https://...), s3://bucket/prefix or a "
            "folder.",
            show_default=False,
        ),
    ],
    command: Annotated[
        list[str],
        typer.Argument(help="The command to run, after --, e.g. -- cairn recall 'deploys'."),
    ],
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="CAIRN_API_KEY",
            help="An API key of the workspace (or CAIRN_API_KEY, from a CI secret); a read key "
            "can pull but not push what the command remembers.",
        ),
    ] = None,
    recovery_key: Annotated[
        str | None,
        typer.Option(
            "--recovery-key",
            envvar="CAIRN_RECOVERY_KEY",
            help="Join with the recovery key instead of CAIRN_PASSPHRASE.",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="The device's name while it lives (default: ephemeral HOST)."),
    ] = None,
    json_: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the report as one line of JSON on stderr, after COMMAND's own output "
            "(stdout is COMMAND's).",
        ),
    ] = False,
) -> None:
    """Run COMMAND on a throwaway device: join the workspace into a temporary store (its
    passphrase from CAIRN_PASSPHRASE), pull, run COMMAND with CAIRN_HOME set to that store,
    push what it remembered, then remove the device record and delete the store and its keys.
    Exits with COMMAND's exit code (8 if the final push failed: the store is then kept)."""
    report = ephemeral.run(
        remote,
        command,
        os.environ,
        api_key=api_key,
        recovery_key=recovery_key,
        name=name,
        say=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if json_:
        print(json.dumps(report.to_dict()), file=sys.stderr, flush=True)
    raise typer.Exit(report.exit_code)
