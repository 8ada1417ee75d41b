"""`cairn sync setup`: its options, the passphrase prompt and the report (``wiring.setup_sync``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated
from urllib.parse import unquote, urlparse

import typer

from cairn import config, master_keys, wiring
from cairn.cli import output
from cairn.cli.common import JsonFlag, open_store
from cairn.crypto import keyring
from cairn.errors import InvalidInput
from cairn.sync.setup import folder_to_make


def setup(
    remote_url: Annotated[
        str | None,
        typer.Option(
            "--remote",
            "--server",
            help="Where to sync: a Cairn sync server (https://...), an S3 or S3-compatible "
            "bucket (s3://bucket/prefix) or a folder that exists (/path/to/folder, ./folder or "
            "file:///path/to/folder).",
        ),
    ] = None,
    create: Annotated[
        bool,
        typer.Option(
            "--create",
            help="Make the folder if it does not exist: a new workspace, with its own "
            "passphrase and recovery key.",
        ),
    ] = False,
    endpoint_url: Annotated[
        str | None,
        typer.Option(
            "--endpoint-url",
            help="An S3-compatible service's endpoint (R2, B2, MinIO, ...); credentials come "
            "from the usual AWS variables or profile.",
        ),
    ] = None,
    git: Annotated[
        bool,
        typer.Option(
            "--git",
            help="Sync through the git repository you are in: a .cairn/ folder of small "
            "immutable files that you commit, push and pull (or --remote file:///... in a "
            "repository).",
        ),
    ] = False,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="CAIRN_API_KEY",
            help="An API key of the workspace (or set "
            "CAIRN_API_KEY, which keeps it out of your shell history).",
        ),
    ] = None,
    recovery_key: Annotated[
        str | None,
        typer.Option(
            "--recovery-key",
            envvar="CAIRN_RECOVERY_KEY",
            help="Join with the workspace's recovery key instead of its passphrase.",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="This device's name (default: the host name).")
    ] = None,
    json_: JsonFlag = False,
) -> None:
    """Connect this device to a workspace: check the remote, create or unlock the end-to-end
    encrypted keyring (passphrase asked, or CAIRN_PASSPHRASE; a new one needs at least 8
    characters), register the device, save.

    The workspace key goes to the OS keyring where one exists, else to a 0600 file under
    $CAIRN_HOME/keys (CAIRN_KEY_STORE=auto|keyring|file chooses)."""
    settings = config.load()
    url = _remote_url(remote_url, git)
    folder_to_make(url, endpoint_url, create, git)  # bad options are refused before the store opens
    with open_store() as store:
        done = wiring.setup_sync(
            settings,
            store,
            url,
            passphrase=ask_passphrase,
            recovery_key=recovery_key,
            api_key=api_key,
            device_name=name,
            endpoint_url=endpoint_url,
            create=create,
            git=git,
        )
    result = done.to_dict()
    if json_:
        output.emit_json(result)
        return
    if done.made_folder is not None:
        output.out.print(f"made the folder {done.made_folder} for a new workspace")
    device_name, pending, path = done.device_name, done.pending, done.saved_to
    key_store, recovery = done.key_store, done.recovery_key
    workspace = f" (workspace {result['workspace']})" if result["workspace"] else ""
    output.out.print(
        f"[green]sync set up[/]: {result['remote']}{workspace}, "
        f"this device is {device_name} ({done.device_id})"
    )
    if done.hosted:
        output.out.print(
            "[yellow]this is a hosted workspace[/]: memories are sent in plain text and the "
            "server can read them (no passphrase, no end-to-end encryption)"
        )
    elif key_store == master_keys.OS_KEYRING:
        output.out.print("the workspace key is kept in the OS keyring")
    else:
        output.out.print(f"the workspace key is kept in {path} (readable by you only)")
    if recovery is not None:
        output.out.print(
            "created the workspace's end-to-end encryption keyring. Your recovery key, shown "
            f"this once:\n\n    [bold]{recovery}[/]\n\nwrite it down and keep it apart from "
            "the passphrase: with either, a new device can join; without either, nobody "
            "can read these memories (not even the server or storage holding them)."
        )
    output.out.print(
        f"{output.plural(pending, 'change')} to send"
        + ("; run `cairn sync now`" if pending else "")
    )
    if git:
        output.out.print(
            "then commit .cairn/ and push it; teammates pull, run `cairn sync setup --git` "
            "and join with the passphrase"
        )


def _remote_url(remote_url: str | None, git: bool) -> str:
    """The remote's URL from --remote (a plain folder path becomes a file:// URL), or the
    .cairn folder of this git repository (--git)."""
    if remote_url in (".", "..") or (remote_url or "").startswith(("/", "./", "../", "~")):
        assert remote_url is not None
        remote_url = Path(remote_url).expanduser().resolve().as_uri()
    if git:
        if remote_url is None:
            top = config.git_root()
            if top is None:
                raise InvalidInput("--git: this folder is not inside a git repository")
            return (top / ".cairn").as_uri()
        if not remote_url.startswith("file://"):
            raise InvalidInput("--git goes with a file:// remote inside a repository")
        if config.git_root(Path(unquote(urlparse(remote_url).path))) is None:
            raise InvalidInput(f"--git: {remote_url} is not inside a git repository")
        return remote_url
    if remote_url is None:
        raise InvalidInput("say where to sync: --remote URL (or --git in a repository)")
    return remote_url


def ask_passphrase(creating: bool, env: str = "CAIRN_PASSPHRASE") -> str:
    """The passphrase from the environment (scripts), else asked without echo."""
    if os.environ.get(env):
        return os.environ[env]
    if not sys.stdin.isatty():
        raise InvalidInput(f"no passphrase: set {env} or run this in a terminal")
    prompt = (
        f"new passphrase for the workspace (at least {keyring.MIN_PASSPHRASE} characters)"
        if creating
        else "the workspace's passphrase"
    )
    return str(typer.prompt(prompt, hide_input=True, confirmation_prompt=creating))
