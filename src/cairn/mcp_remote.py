"""A thin MCP server on stdio for a hosted workspace: the sync server's /mcp, relayed, no store.

``cairn mcp --remote URL --api-key KEY`` relays each JSON-RPC message an MCP client writes on
stdin to the server's ``/mcp`` (``cairn.server.mcp``, stateless streamable HTTP answering JSON)
and writes the answer back on stdout. The server does all the MCP work, so the tools, their
descriptions and the scopes are its own; nothing is stored or embedded here and neither the MCP
SDK nor a model is loaded, so it starts at once, for machines where a local store is unwanted.

A refusal by the server (a wrong key, a rate limit, a server error) reaches the client as a
JSON-RPC error naming Cairn's error code; a refused ``initialize`` also ends the relay (exit 1),
so an MCP client shows at connection time why.
"""

from __future__ import annotations

import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

import httpx

from cairn.errors import InvalidInput

TIMEOUT = 60.0
"""Seconds one message may take at the server (a hosted recall embeds the query there)."""
MAX_LINE = 8 * 1024 * 1024
"""The longest message relayed (the server's own body limit is 8 MiB)."""
CONCURRENT = 4
"""Messages in flight at once: a slow recall does not hold up a quick list."""
_SERVER_ERROR = -32000  # JSON-RPC's range for implementation-defined server errors


def endpoint(url: str) -> str:
    """The server's MCP address from its base URL (``https://host`` → ``https://host/mcp``)."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")) or len(url) > 2048:
        raise InvalidInput(f"--remote must be the sync server's http:// or https:// URL: {url!r}")
    return url if url.endswith("/mcp") else f"{url}/mcp"


class Relay:
    """Carries messages between an MCP client's stdio and the server's /mcp."""

    def __init__(self, url: str, api_key: str, out: IO[bytes], log: IO[str]) -> None:
        self.url, self.out, self.log = endpoint(url), out, log
        self.client = httpx.Client(
            headers={
                "Authorization": f"Bearer {api_key}",
                "Accept": "application/json, text/event-stream",
                "Content-Type": "application/json",
            },
            timeout=TIMEOUT,
        )
        self.session: dict[str, str] = {}  # the protocol version (and any session id) agreed
        self.refused_start = threading.Event()
        self._write = threading.Lock()

    def close(self) -> None:
        self.client.close()

    def send(self, line: bytes) -> None:
        """Relay one message and write the server's answer (or the error) back."""
        try:
            message = json.loads(line)
        except ValueError:
            self.reply(None, -32700, "parse error: a message must be one line of JSON")
            return
        request = isinstance(message, dict) and "method" in message and "id" in message
        ident = message.get("id") if request else None
        try:
            answer = self.client.post(self.url, content=line, headers=self.session)
        except httpx.HTTPError as exc:
            said = f"unreachable: cannot reach the sync server at {self.url} ({exc}); check "
            self._fail(message, ident, said + "the URL and that `cairn server run` is up")
            return
        if answer.status_code == 202 or not answer.content:
            return  # a notification or a response the server took
        if answer.status_code >= 400 and not _is_jsonrpc(answer):
            self._fail(message, ident, _refusal(answer))
            return
        self._learn(message, answer)
        with self._write:
            self.out.write(answer.content.strip() + b"\n")
            self.out.flush()

    def _learn(self, message: Any, answer: httpx.Response) -> None:
        """After ``initialize``: the headers every later request carries."""
        if answer.headers.get("mcp-session-id"):
            self.session["Mcp-Session-Id"] = answer.headers["mcp-session-id"]
        if isinstance(message, dict) and message.get("method") == "initialize":
            try:
                version = answer.json()["result"]["protocolVersion"]
            except (ValueError, KeyError, TypeError):
                return
            if isinstance(version, str) and len(version) < 64:
                self.session["MCP-Protocol-Version"] = version

    def _fail(self, message: Any, ident: Any, said: str) -> None:
        print(f"cairn mcp --remote: {said}", file=self.log, flush=True)
        if isinstance(message, dict) and message.get("method") == "initialize":
            self.refused_start.set()
        if ident is not None:
            self.reply(ident, _SERVER_ERROR, said)

    def reply(self, ident: Any, code: int, said: str) -> None:
        error = {"jsonrpc": "2.0", "id": ident, "error": {"code": code, "message": said}}
        with self._write:
            self.out.write(json.dumps(error).encode() + b"\n")
            self.out.flush()


def _is_jsonrpc(answer: httpx.Response) -> bool:
    try:
        return isinstance(answer.json(), dict) and answer.json().get("jsonrpc") == "2.0"
    except ValueError:
        return False


def _refusal(answer: httpx.Response) -> str:
    """What a refusing server said (``{"error": {"code", "message"}}``), for the agent."""
    try:
        said = answer.json()["error"]
        code, message = str(said["code"]), str(said["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{answer.status_code}", answer.text[:200]
    if answer.status_code in (401, 403):
        message += "; check --api-key or CAIRN_API_KEY (`cairn server key list` shows the keys)"
    return f"{code}: {message}"


def serve(url: str, api_key: str, stdin: IO[bytes], stdout: IO[bytes], log: IO[str]) -> int:
    """Relay until stdin ends (0), or until the server refuses to start a session (1)."""
    relay = Relay(url, api_key, stdout, log)
    try:
        with ThreadPoolExecutor(CONCURRENT) as pool:
            while not relay.refused_start.is_set():
                line = stdin.readline(MAX_LINE + 1)
                if not line:
                    break
                if len(line) > MAX_LINE:
                    relay.reply(None, -32600, f"a message may be at most {MAX_LINE} bytes")
                    _skip_rest(stdin, line)
                elif line.strip():
                    if _is_initialize(line):  # the session's headers come from its answer
                        relay.send(line)
                    else:
                        pool.submit(relay.send, line)
    finally:
        relay.close()
    return 1 if relay.refused_start.is_set() else 0


def _is_initialize(line: bytes) -> bool:
    return b'"initialize"' in line


def _skip_rest(stdin: IO[bytes], line: bytes) -> None:
    while line and not line.endswith(b"\n"):
        line = stdin.readline(MAX_LINE)


def run(url: str, api_key: str) -> None:
    """The composition root of this edge: relay stdio, or say on stderr why not and exit 1."""
    if not api_key:
        print(
            "cairn mcp --remote: an API key is needed (--api-key or CAIRN_API_KEY); "
            "`cairn server key create` makes one",
            file=sys.stderr,
        )
        raise SystemExit(1)
    try:
        code = serve(url, api_key, sys.stdin.buffer, sys.stdout.buffer, sys.stderr)
    except InvalidInput as exc:
        print(f"cairn mcp --remote: {exc.code}: {exc.message}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(code)
