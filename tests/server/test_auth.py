"""API keys over real HTTP: authentication, scopes, workspace isolation, key admin, rate limit."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from cairn.errors import AuthFailed, Forbidden, InvalidInput, RateLimited
from cairn.protocol import WireMutation
from cairn.remotes.http import HttpRemote
from cairn.server import keys
from cairn.server.context import ServerSettings, now_ms

from ..conftest import a_keyring, envelope

SyncServer = Any  # the tests/conftest.py fixture's type (conftest modules are not importable)


def mutation(n: int) -> WireMutation:
    return WireMutation(
        f"m-{n}", "dev-a", f"{1_700_000_000_000 + n:013d}-0000-dev-a", "e", None, envelope()
    )


def call(server: SyncServer, method: str, path: str, key: str | None, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, server.url + path, headers=headers, timeout=30, **kw)


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    """The response is the server's error shape with this status and code; returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    message: str = body["error"]["message"]
    assert message
    return message


PROTECTED = [
    ("POST", "/v1/sync/push", {"json": {"mutations": []}}),
    ("GET", "/v1/sync/pull", {}),
    ("GET", "/v1/sync/status", {}),
    ("GET", "/v1/keyring", {}),
    ("PUT", "/v1/keyring", {"json": {"blob": "", "expected_version": None}}),
    ("GET", "/v1/devices", {}),
    ("POST", "/v1/devices", {"json": {"device_id": "d", "name": "n"}}),
    ("GET", "/v1/auth/keys", {}),
    ("POST", "/v1/auth/keys", {"json": {"name": "n", "scopes": ["read"]}}),
    ("DELETE", "/v1/auth/keys/abc", {}),
]


@pytest.mark.parametrize(("method", "path", "kw"), PROTECTED)
def test_every_sync_route_needs_a_valid_key(
    sync_server: SyncServer, method: str, path: str, kw: dict[str, Any]
) -> None:
    missing = call(sync_server, method, path, None, **kw)
    assert "Authorization" in assert_error(missing, 401, "auth_failed")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert_error(call(sync_server, method, path, "not-a-cairn-key", **kw), 401, "auth_failed")
    forged = sync_server.admin_key[:-4] + "AAAA"
    assert_error(call(sync_server, method, path, forged, **kw), 401, "auth_failed")


def test_a_read_key_cannot_write(sync_server: SyncServer) -> None:
    reader = HttpRemote(sync_server.url, sync_server.new_key(["read"]))
    with pytest.raises(Forbidden, match="write"):
        reader.push([mutation(1)])
    with pytest.raises(Forbidden):
        reader.put_keyring(b"ring", None)
    with pytest.raises(Forbidden):
        reader.register_device("dev-a", "laptop")
    assert reader.pull(None).mutations == []
    assert reader.status()["key"]["scopes"] == ["read"]
    reader.close()


@pytest.mark.parametrize("scope", ["read", "write"])
def test_only_admin_keys_manage_keys(sync_server: SyncServer, scope: str) -> None:
    key = sync_server.new_key([scope])
    assert_error(call(sync_server, "GET", "/v1/auth/keys", key), 403, "forbidden")
    made = call(sync_server, "POST", "/v1/auth/keys", key, json={"name": "x", "scopes": ["read"]})
    assert_error(made, 403, "forbidden")


def test_admin_creates_lists_and_revokes_keys(sync_server: SyncServer) -> None:
    admin = sync_server.admin_key
    made = call(
        sync_server, "POST", "/v1/auth/keys", admin, json={"name": "ci", "scopes": ["write"]}
    )
    assert made.status_code == 201, made.text
    body = made.json()
    assert set(body) == {"id", "key", "name", "scopes", "created_at", "last_used_at", "revoked_at"}
    assert body["key"].startswith(f"cairn_{body['id']}_") and body["scopes"] == ["write"]
    writer = HttpRemote(sync_server.url, body["key"])
    assert writer.push([mutation(1)]).stored == 1

    listed = call(sync_server, "GET", "/v1/auth/keys", admin).json()["keys"]
    assert {k["name"] for k in listed} == {"admin", "ci"}
    assert all("key" not in k and "secret_hash" not in k for k in listed)
    assert body["key"].split("_", 2)[2] not in str(listed)
    ci = next(k for k in listed if k["name"] == "ci")
    assert ci["revoked_at"] is None
    assert recorded_use(sync_server, body["id"])

    revoked = call(sync_server, "DELETE", f"/v1/auth/keys/{body['id']}", admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    with pytest.raises(AuthFailed, match="revoked"):
        writer.push([mutation(2)])
    writer.close()
    assert_error(call(sync_server, "DELETE", "/v1/auth/keys/000000000000", admin), 404, "not_found")


def test_bad_key_requests_are_invalid_input(sync_server: SyncServer) -> None:
    admin = sync_server.admin_key
    for body in ({"name": "x", "scopes": ["root"]}, {"name": "x", "scopes": []}, {"name": ""}):
        response = call(sync_server, "POST", "/v1/auth/keys", admin, json=body)
        assert_error(response, 422, "invalid_input")
    assert len(call(sync_server, "GET", "/v1/auth/keys", admin).json()["keys"]) == 1


def test_a_key_of_one_workspace_cannot_touch_another(sync_server: SyncServer) -> None:
    other, other_admin = sync_server.new_workspace("other")
    mine = HttpRemote(sync_server.url, sync_server.admin_key)
    theirs = HttpRemote(sync_server.url, other_admin)
    mine.push([mutation(1), mutation(2)])
    mine.put_keyring(a_keyring()[0].to_bytes(), None)
    mine.register_device("dev-a", "laptop")
    theirs.push([mutation(1)])

    assert [m.seq for m in theirs.pull(None).mutations] == [1]
    assert theirs.get_keyring() is None
    status = theirs.status()
    assert (status["workspace"], status["mutations"], status["devices"]) == ("other", 1, 0)
    assert mine.status()["mutations"] == 2
    my_key_id = sync_server.admin_key.split("_")[1]
    gone = call(sync_server, "DELETE", f"/v1/auth/keys/{my_key_id}", other_admin)
    assert_error(gone, 404, "not_found")
    assert mine.status()["key"]["id"] == my_key_id  # still works
    assert sync_server.storage.workspace_by_id(other.id).name == "other"
    mine.close()
    theirs.close()


def recorded_use(server: SyncServer, key_id: str) -> int:
    """When the server recorded the key's last use, waiting for its batched write (a key new
    to the process is written within a second)."""
    deadline = time.monotonic() + 30
    while (found := server.storage.find_key(key_id)) and found.last_used_at is None:
        assert time.monotonic() < deadline, "the key's use was never recorded"
        time.sleep(0.02)
    assert found is not None
    return int(found.last_used_at)


def test_use_is_recorded_soon_then_at_most_once_a_minute(sync_server: SyncServer) -> None:
    key = sync_server.new_key(["read"])
    key_id = key.split("_")[1]
    before = sync_server.storage.find_key(key_id)
    assert before is not None and before.last_used_at is None
    assert call(sync_server, "GET", "/v1/sync/status", key).status_code == 200
    used = recorded_use(sync_server, key_id)
    assert call(sync_server, "GET", "/v1/sync/status", key).status_code == 200
    time.sleep(2)  # past the write of what is new to the process; the minute is far off
    again = sync_server.storage.find_key(key_id)
    assert again is not None and again.last_used_at == used


def test_too_many_requests_get_429_with_retry_after(
    sync_server_factory: Callable[..., SyncServer],
) -> None:
    # One token per 100 s: the fourth request is over the limit however slow this machine is.
    server = sync_server_factory(ServerSettings(rate_limit=0.01, rate_burst=3))
    other = server.new_key(["read"])
    statuses = [call(server, "GET", "/v1/sync/status", server.admin_key) for _ in range(4)]
    assert [r.status_code for r in statuses[:3]] == [200, 200, 200]
    assert_error(statuses[3], 429, "rate_limited")
    assert int(statuses[3].headers["Retry-After"]) >= 1
    assert call(server, "GET", "/v1/sync/status", other).status_code == 200  # per key
    remote = HttpRemote(server.url, server.admin_key)
    with pytest.raises(RateLimited) as limited:
        remote.status()
    assert limited.value.retry_after >= 1
    remote.close()


def test_keyring_blobs_travel_as_base64(sync_server: SyncServer) -> None:
    key = sync_server.admin_key
    put = call(sync_server, "PUT", "/v1/keyring", key, json={"blob": "not base64!"})
    assert_error(put, 422, "invalid_input")
    blob = base64.b64encode(a_keyring()[0].to_bytes()).decode()
    assert call(sync_server, "PUT", "/v1/keyring", key, json={"blob": blob}).json() == {
        "version": 1
    }
    stale = call(sync_server, "PUT", "/v1/keyring", key, json={"blob": blob})
    assert_error(stale, 409, "conflict")
    assert call(sync_server, "GET", "/v1/keyring", key).json() == {
        "blob": blob,
        "version": 1,
        "revoked_key_ids": [],
        "signature": None,  # made unsigned, as an admin key may while nothing is signed
        "verify_key": None,
        "signed_version": None,
    }
    negative = {"blob": blob, "expected_version": 1, "revoked_key_ids": [-1]}
    assert_error(call(sync_server, "PUT", "/v1/keyring", key, json=negative), 422, "invalid_input")


@pytest.mark.parametrize("woken", [True, False], ids=["woken-by-the-push", "by-the-recheck"])
def test_a_long_poll_answers_401_once_its_key_is_revoked(
    sync_server_factory: Callable[..., SyncServer], woken: bool
) -> None:
    """A read key's open long-poll must not hand out what was pushed after its revocation,
    whether the push wakes it (same process) or its periodic recheck finds it (another one)."""
    sync_server = sync_server_factory(ServerSettings(rate_limit=0, recheck=0.5))
    reader = sync_server.new_key(["read"])
    reader_id = reader.split("_")[1]
    answer: list[httpx.Response] = []
    waiter = threading.Thread(
        target=lambda: answer.append(
            call(sync_server, "GET", "/v1/sync/pull?since=0&wait=20", reader)
        )
    )
    waiter.start()
    # The key's first use is recorded (within a second) once it authenticated: from then on
    # the pull is past its key check and reads or waits.
    recorded_use(sync_server, reader_id)
    revoked = call(sync_server, "DELETE", f"/v1/auth/keys/{reader_id}", sync_server.admin_key)
    assert revoked.status_code == 200, revoked.text
    if woken:
        writer = HttpRemote(sync_server.url, sync_server.new_key(["write"]))
        assert writer.push([mutation(1)]).stored == 1
        writer.close()
    else:  # as another server process on the same database would: no in-process wake-up
        sync_server.storage.push(sync_server.workspace.id, [mutation(1)], None, 0)
    waiter.join(timeout=60)
    assert not waiter.is_alive()
    assert "revoked" in assert_error(answer[0], 401, "auth_failed")
    assert "m-1" not in answer[0].text


@pytest.mark.parametrize("name", ["acme\n", "acme\r\n", "\u0661acme"])
def test_a_workspace_name_must_match_whole_and_in_ascii(sync_server: SyncServer, name: str) -> None:
    with pytest.raises(InvalidInput, match="workspace name"):
        keys.create_workspace(sync_server.storage, name, now_ms())
    assert [w.name for w in sync_server.storage.workspaces()] == ["test"]
