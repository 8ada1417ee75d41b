"""What the HTTP remote says when the server is not there or not answering (no key in it)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from cairn.errors import RemoteUnreachable
from cairn.remotes.http import HttpRemote

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
