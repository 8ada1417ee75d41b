"""How `cairn` starts: at once for `cairn mcp --remote`, else through the full command line.

The full command line (``cairn.cli.app``) imports every command's dependencies, numpy and the
store among them; the thin MCP relay needs none of them, and an MCP client waits for it to
start. So ``cairn mcp --remote URL [--api-key KEY]``, given in exactly that form, goes straight
to ``cairn.mcp_remote``; anything more or else (``--help``, another option) goes to the full
command line, which takes the same options.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def thin_mcp(args: Sequence[str]) -> tuple[str, str] | None:
    """(URL, API key) when ``args`` are ``mcp --remote URL`` with at most ``--api-key KEY``."""
    if not args or args[0] != "mcp":
        return None
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--remote")
    parser.add_argument("--api-key")
    try:
        known, rest = parser.parse_known_args(args[1:])
    except argparse.ArgumentError:
        return None
    if rest or known.remote is None:
        return None
    return known.remote, known.api_key or os.environ.get("CAIRN_API_KEY", "")


def main() -> None:
    """The `cairn` entry point."""
    remote = thin_mcp(sys.argv[1:])
    if remote is None:
        from cairn.cli.app import main as full

        full()
        return
    from cairn import mcp_remote

    try:
        mcp_remote.run(*remote)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
