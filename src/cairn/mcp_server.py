"""The MCP server: Cairn's verbs as tools an agent calls over stdio (`cairn mcp`).

``run`` is the composition root of this edge; ``create_server`` registers the tools against a
store that is already built, so tests and other hosts can wire their own.
"""

from __future__ import annotations

import sys

from mcp.server import MCPServer
from mcp.types import ToolAnnotations

from cairn import agent_text, wiring
from cairn.agent_tools import add_memory_tools, new_server, tool_errors
from cairn.device_store import Store
from cairn.errors import StoreError
from cairn.settings import Settings


def create_server(store: Store, sync: wiring.SyncControl | None = None) -> MCPServer:
    """An MCP server whose tools call ``store`` (and ``sync``, which adds the sync tools); the
    caller keeps ownership of both."""
    server = new_server()
    # The SDK serves requests concurrently and runs each sync tool on a worker thread; a Store
    # is safe to share between threads, so the tools call it directly.
    add_memory_tools(server, lambda _ctx: store, store.project)
    if sync is not None:
        _sync_tools(server, sync)
    return server


def _sync_tools(server: MCPServer, sync: wiring.SyncControl) -> None:
    @server.tool(
        description=(
            "Whether this device's memories are in sync with the user's other devices: the "
            "phase (idle, pushing, pulling, healthy, backoff, degraded, disabled), a reason code "
            "when not healthy (e.g. unreachable, auth_failed, quota_exceeded, key_mismatch, "
            "dead_letter), a message, the last success, and counts of changes waiting to be "
            "sent, refused (dead letters) or in conflict. Sync runs by itself in the "
            "background; call this when the user asks about sync or a memory from another "
            "device seems missing, and relay the message "
            "when it says the user must act (for example auth_failed or dead letters)."
        ),
        annotations=ToolAnnotations(read_only_hint=True),
        structured_output=False,
    )
    def sync_status() -> str:
        with tool_errors():
            status = sync.status()
        worker = status["worker"]
        return agent_text.fields(
            {
                "phase": worker["phase"],
                "reason": worker["reason"],
                "message": worker["message"],
                "remote": status["remote"] or "none (sync is not set up on this device)",
                "pending": status["pending"],
                "dead letters": status["dead_letters"],
                "conflicts": status["conflicts"],
                "last success": worker["last_success_at"],
                "last push": status["last_push_at"],
                "last pull": status["last_pull_at"],
                "background worker": "running" if worker["worker_running"] else "not running",
            }
        )

    @server.tool(
        description=(
            "Sync now instead of waiting for the background sync (a few seconds): send this "
            "device's changes and receive the other devices'. Call it when the user asks, or "
            "before relying on a memory another device has just written. Returns the counts; "
            "it fails with a reason code (e.g. unreachable, auth_failed, sync_not_configured) "
            "and changes nothing local when sync cannot run."
        ),
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False),
        structured_output=False,
    )
    def sync_now() -> str:
        with tool_errors():
            steps = sync.now().values()
        total = {
            key: sum(step.get(key, 0) for step in steps)
            for key in ("pushed", "received", "applied", "dead_lettered", "failed")
        }
        return (
            f"pushed {total['pushed']}, received {total['received']}, applied "
            f"{total['applied']}, refused or unreadable {total['dead_lettered'] + total['failed']}"
            + (" (see sync_status)" if total["dead_lettered"] + total["failed"] else "")
        )


def run(settings: Settings, autosync: bool = True) -> None:
    """Serve the tools on stdin/stdout until the client disconnects, then close the store;
    meanwhile (unless ``autosync`` is off) the store syncs in the background."""
    with wiring.build(settings) as store:
        try:
            store.warm_up()  # so the agent's first recall is not slow
        except StoreError as exc:
            # Trigger: a damaged (or long-locked) store. Why: the agent learns what is wrong
            # and what to do only from a server that answers. Outcome: served anyway; each
            # tool that touches the damage answers the error, the message on stderr too.
            print(f"cairn mcp: {exc.message}", file=sys.stderr)
        sync = wiring.SyncControl(settings, store, autosync)
        try:
            create_server(store, sync).run("stdio")
        finally:
            sync.close()
