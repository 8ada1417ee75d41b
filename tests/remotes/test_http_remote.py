"""What the HTTP remote says when the server is not there or not answering (no key in it), and
how it talks to a server from before binary pages."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cairn.binary_pages import MEDIA_TYPE
from cairn.errors import RemoteUnreachable
from cairn.protocol import WireMutation
from cairn.remotes.http import HttpRemote
from cairn.server import keys
from cairn.server.app import create_app
from cairn.server.context import now_ms
from cairn.server.storage.sqlite import SqliteStorage

from ..conftest import envelope, serve

KEY = "cairn_0123456789ab_" + "s" * 43


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (into the backlog) but never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_nothing_listening_is_unreachable_naming_the_url() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    remote = HttpRemote(url, KEY)
    with pytest.raises(RemoteUnreachable) as failed:
        remote.status()
    assert url in failed.value.message and "s" * 43 not in failed.value.message
    remote.close()


def test_a_server_that_never_answers_times_out_as_unreachable(silent_port: int) -> None:
    remote = HttpRemote(f"http://127.0.0.1:{silent_port}", KEY, timeout=0.3)
    with pytest.raises(RemoteUnreachable, match="did not answer in time"):
        remote.get_keyring()
    remote.close()


def test_the_url_and_messages_never_hold_the_key(silent_port: int) -> None:
    remote = HttpRemote(f"http://127.0.0.1:{silent_port}/", KEY, device_id="dev-a", timeout=0.3)
    assert remote.url == f"http://127.0.0.1:{silent_port}"
    with pytest.raises(RemoteUnreachable) as failed:
        remote.pull(None)
    assert KEY not in str(failed.value) and KEY not in remote.url
    remote.close()


class ServerBeforeBinaryPages:
    """The real sync server as a server from before binary pages answers: blind to Accept and
    Content-Type, so it serves JSON and reads every push body as JSON (refusing a binary one as
    invalid_input, as that server did)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            dropped = (b"accept", b"content-type")
            scope = {**scope, "headers": [h for h in scope["headers"] if h[0] not in dropped]}
        await self.app(scope, receive, send)


@pytest.fixture
def old_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The URL of a server from before binary pages, and an admin key of its one workspace."""
    storage = SqliteStorage(tmp_path / "server.db")
    _, key = keys.create_workspace(storage, "old", now_ms())
    server, thread, url = serve(ServerBeforeBinaryPages(create_app(storage)))
    yield url, key
    server.should_exit = True
    thread.join(timeout=10)
    storage.close()


def test_against_a_server_before_binary_pages_the_client_falls_back_to_json(
    old_server: tuple[str, str],
) -> None:
    url, key = old_server
    remote = HttpRemote(url, key)
    assert remote.pages == MEDIA_TYPE  # until the server shows otherwise
    batch = [_wire(n) for n in range(3)]
    result = remote.push(batch)  # refused as not JSON, then sent again as JSON
    assert (result.stored, result.last_seq) == (3, 3)
    assert remote.pages == "application/json"
    assert remote.push(batch).duplicates == 3  # JSON from then on: no refusal first
    page = remote.pull(None)
    assert [(m.mutation_id, m.payload, m.seq) for m in page.mutations] == [
        (m.mutation_id, m.payload, n + 1) for n, m in enumerate(batch)
    ]
    fresh = HttpRemote(url, key)  # a pull first: the server answers JSON to the binary Accept
    assert fresh.pull(None).mutations == page.mutations
    remote.close()
    fresh.close()


def _wire(n: int) -> WireMutation:
    return WireMutation(
        f"m-{n}", "dev-a", f"{1_700_000_000_000 + n:013d}-0000-dev-a", "e", None, envelope(b"x")
    )
