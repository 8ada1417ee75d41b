"""Requests the server must refuse without changing anything, and what it reports about itself."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cairn import __version__, protocol
from cairn.errors import PayloadTooLarge
from cairn.model import MAX_INT
from cairn.protocol import WireMutation
from cairn.remotes.http import HttpRemote
from cairn.server.context import ServerSettings

from ..conftest import envelope

SyncServer = Any  # the tests/conftest.py fixture's type (conftest modules are not importable)


def wire(n: int, payload: bytes = b"x") -> WireMutation:
    return WireMutation(
        f"m-{n}", "dev-a", f"{1_700_000_000_000 + n:013d}-0000-dev-a", "e", None, envelope(payload)
    )


def mutation(n: int, payload: bytes = b"x") -> dict[str, Any]:
    return wire(n, payload).to_json()


@pytest.fixture
def client(sync_server: SyncServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {sync_server.admin_key}"}
    with httpx.Client(base_url=sync_server.url, headers=headers, timeout=30) as c:
        yield c


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    """The response is the server's error shape with this status and code; returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    message: str = body["error"]["message"]
    assert message
    return message


def latest_seq(client: httpx.Client) -> int:
    value: int = client.get("/v1/sync/status").json()["latest_seq"]
    return value


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"mutations": {}}',
        b'{"mutations": [], "extra": 1}',
        json.dumps({"mutations": [mutation(1), {**mutation(2), "payload": "!!"}]}).encode(),
        json.dumps({"mutations": [mutation(1), {**mutation(2), "hlc": 7}]}).encode(),
        json.dumps({"mutations": [mutation(1), {**mutation(2), "v": "1"}]}).encode(),
        json.dumps({"mutations": [{k: v for k, v in mutation(1).items() if k != "hlc"}]}).encode(),
    ],
)
def test_malformed_pushes_are_invalid_input_and_store_nothing(
    client: httpx.Client, body: bytes
) -> None:
    response = client.post(
        "/v1/sync/push", content=body, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 422, "invalid_input")
    assert latest_seq(client) == 0


def test_an_unknown_mutation_version_is_rejected_by_id(client: httpx.Client) -> None:
    batch = [mutation(1), {**mutation(2), "v": 2}]
    response = client.post("/v1/sync/push", json={"mutations": batch})
    assert_error(response, 422, "invalid_mutation")
    rejected = response.json()["error"]["rejected"]
    assert [(r["mutation_id"], r["code"]) for r in rejected] == [("m-2", "unsupported_version")]
    assert latest_seq(client) == 0


def test_oversized_bodies_get_413_and_store_nothing(
    sync_server_factory: Callable[..., SyncServer],
) -> None:
    server = sync_server_factory(ServerSettings(max_body=64 * 1024, rate_limit=0))
    big = [wire(n, b"y" * 2000).to_json() for n in range(40)]  # about 110 KB of JSON
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        declared = client.post("/v1/sync/push", json={"mutations": big})
        assert "split" in assert_error(declared, 413, "payload_too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: the server must count
            data = json.dumps({"mutations": big}).encode()
            for start in range(0, len(data), 8192):
                yield data[start : start + 8192]

        streamed = client.post("/v1/sync/push", content=chunks())
        assert_error(streamed, 413, "payload_too_large")
        assert latest_seq(client) == 0
    remote = HttpRemote(server.url, server.admin_key)
    with pytest.raises(PayloadTooLarge):
        remote.push([wire(n, b"y" * 2000) for n in range(40)])
    assert remote.push([wire(n, b"y" * 2000) for n in range(10)]).stored == 10
    remote.close()


@pytest.mark.parametrize(
    "query",
    ["since=-1", "since=x", "limit=0", "limit=100000", "wait=61", "wait=soon"],
)
def test_bad_pull_parameters_are_invalid_input(client: httpx.Client, query: str) -> None:
    assert_error(client.get(f"/v1/sync/pull?{query}"), 422, "invalid_input")


def test_scope_accepts_repeats_and_commas(client: httpx.Client) -> None:
    a, b = "aaaaaaaa", "bbbbbbbb"
    batch = [{**mutation(1), "scope": a}, {**mutation(2), "scope": b}, mutation(3)]
    assert client.post("/v1/sync/push", json={"mutations": batch}).status_code == 200

    def ids(query: str) -> list[str]:
        return [m["mutation_id"] for m in client.get(f"/v1/sync/pull?{query}").json()["mutations"]]

    assert ids(f"scope={a}") == ["m-1", "m-3"]
    assert ids(f"scope={a},{b}") == ids(f"scope={a}&scope={b}") == ["m-1", "m-2", "m-3"]
    assert ids("scope=") == ["m-3"]


def test_pull_pages_carry_seq_next_and_has_more(client: httpx.Client) -> None:
    client.post("/v1/sync/push", json={"mutations": [mutation(n) for n in range(3)]})
    page = client.get("/v1/sync/pull?since=0&limit=2").json()
    assert set(page) == {"mutations", "next", "has_more"}
    assert [m["seq"] for m in page["mutations"]] == [1, 2]
    assert (page["next"], page["has_more"]) == ("2", True)


def test_the_device_header_records_pushes_and_pulls(sync_server: SyncServer) -> None:
    remote = HttpRemote(sync_server.url, sync_server.admin_key, device_id="dev-a")
    remote.register_device("dev-a", "laptop")
    remote.push([wire(n) for n in range(2)])
    remote.pull(None)
    remote.close()
    headers = {"Authorization": f"Bearer {sync_server.admin_key}"}
    deadline = time.monotonic() + 30
    while True:  # a pull is recorded by a batched write, within a second for a new device
        (device,) = httpx.get(f"{sync_server.url}/v1/devices", headers=headers).json()["devices"]
        if device["last_pull_at"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert (device["device_id"], device["name"], device["pushed"]) == ("dev-a", "laptop", 2)
    assert device["last_push_at"] and device["last_pull_at"]
    bad = httpx.get(
        f"{sync_server.url}/v1/sync/pull", headers={**headers, "X-Cairn-Device": "no spaces"}
    )
    assert_error(bad, 422, "invalid_input")


def test_unknown_routes_and_methods_answer_in_the_error_shape(client: httpx.Client) -> None:
    assert "/docs" in assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.delete("/v1/sync/push"), 405, "method_not_allowed")


def test_healthz_needs_no_key(sync_server: SyncServer) -> None:
    response = httpx.get(f"{sync_server.url}/healthz")
    assert response.json() == {"status": "ok", "version": __version__}


def test_metrics_count_requests_and_sync_traffic(
    sync_server: SyncServer, client: httpx.Client
) -> None:
    _, other_key = sync_server.new_workspace("acme-private")
    other = HttpRemote(sync_server.url, other_key)
    other.push([wire(9)])
    other.close()
    client.post("/v1/sync/push", json={"mutations": [mutation(1, b"abc"), mutation(2, b"de")]})
    client.post("/v1/sync/push", json={"mutations": [mutation(1, b"abc")]})
    client.get("/v1/sync/pull")
    client.get("/v1/nothing")
    response = httpx.get(f"{sync_server.url}/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in response.text.splitlines()
        if line and not line.startswith("#")
    }
    assert (
        samples['cairn_http_requests_total{route="/v1/sync/push",method="POST",status="200"}'] == 3
    )
    assert samples['cairn_http_requests_total{route="unmatched",method="GET",status="404"}'] == 1
    assert samples["cairn_mutations_pushed_total"] == 3
    assert samples["cairn_mutations_duplicate_total"] == 1
    assert samples["cairn_mutations_pulled_total"] == 2
    sealing = len(envelope())  # each payload is an envelope around its bytes
    assert samples["cairn_push_payload_bytes_total"] == 9 + 4 * sealing
    assert samples["cairn_pull_payload_bytes_total"] == 5 + 2 * sealing
    assert samples["cairn_workspaces"] == 2 and samples["cairn_mutations_stored"] == 3
    assert samples["cairn_latest_seq_max"] == 2
    assert "acme" not in response.text  # workspace names are private


def test_a_long_poll_sees_pushes_that_bypass_this_process(
    sync_server_factory: Callable[..., SyncServer],
) -> None:
    # Writing to the storage directly wakes no waiter (as if another process's notification
    # were lost): the periodic safety re-read still finds it.
    sync_server = sync_server_factory(ServerSettings(rate_limit=0, recheck=0.5))
    remote = HttpRemote(sync_server.url, sync_server.admin_key)
    started = time.monotonic()
    timer = threading.Timer(
        0.3, lambda: sync_server.storage.push(sync_server.workspace.id, [wire(1)], None, 0)
    )
    timer.start()
    page = remote.pull(None, wait=20)
    timer.join()
    assert [m.mutation_id for m in page.mutations] == ["m-1"]
    assert time.monotonic() - started < 5
    remote.close()


def pull_everything(client: httpx.Client) -> list[dict[str, Any]]:
    """Every mutation of the workspace, each page decoded as strict JSON (as any client would)."""
    found: list[dict[str, Any]] = []
    since = 0
    while True:
        response = client.get(f"/v1/sync/pull?since={since}&limit=2")
        assert response.status_code == 200, response.text
        page = json.loads(response.content)
        found += page["mutations"]
        if not page["has_more"]:
            return found
        since = int(page["next"])


@pytest.mark.parametrize(
    "change",
    [
        {"mutation_id": "x\n"},
        {"device_id": "dev-a\n"},
        {"entity_id": "e\n"},
        {"hlc": wire(2).hlc + "\n"},
        {"scope": "aaaaaaaa\n"},
        {"hlc": "\u0661\u0667" + wire(2).hlc[2:]},  # Arabic-Indic digits are \d, not ASCII
    ],
)
def test_a_mutation_whose_fields_match_only_before_a_newline_is_refused(
    client: httpx.Client, change: dict[str, str]
) -> None:
    bad = {**mutation(2), **change}
    response = client.post("/v1/sync/push", json={"mutations": [mutation(1), bad]})
    assert_error(response, 422, "invalid_mutation")
    assert latest_seq(client) == 0
    assert client.post("/v1/sync/push", json={"mutations": [mutation(3)]}).status_code == 200
    assert [m["mutation_id"] for m in pull_everything(client)] == ["m-3"]


_VALID = {
    "mutation_id": st.from_regex(r"\A[0-9A-Za-z_.:|-]{1,12}\Z"),
    "device_id": st.from_regex(r"\A[0-9A-Za-z_.:|-]{1,12}\Z"),
    "entity_id": st.from_regex(r"\A[0-9A-Za-z_.:|-]{1,12}\Z"),
    "hlc": st.from_regex(r"\A[0-9]{13}-[0-9a-f]{4}-[0-9A-Za-z_-]{1,12}\Z"),
    "scope": st.none() | st.from_regex(r"\A[0-9a-f]{8,16}\Z"),
}
# A final newline (what `$` lets through) half the time; characters JSON must escape otherwise.
_TRICKY = st.just("\n") | st.sampled_from(['"', "\\", "\x00", "\u2028", "\u0661", "\r\n", " "])


@st.composite
def _fuzzed_mutation(draw: st.DrawFn) -> dict[str, Any]:
    """A mutation whose fields are valid, or all but one with a character added."""
    fields = {name: draw(strategy) for name, strategy in _VALID.items()}
    for name in draw(st.lists(st.sampled_from(sorted(_VALID)), max_size=1)):
        fields[name] = (fields[name] or "") + draw(_TRICKY)
    return {**mutation(0), **fields}


@given(batch=st.lists(_fuzzed_mutation(), min_size=1, max_size=2))
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_page_a_fuzzed_push_leaves_is_valid_json(
    client: httpx.Client, batch: list[dict[str, Any]]
) -> None:
    pushed = client.post("/v1/sync/push", json={"mutations": batch})
    assert pushed.status_code in (200, 422), pushed.text
    for item in pull_everything(client):
        assert protocol.problem(protocol.from_json(item)) is None, item


@pytest.mark.parametrize(
    ("path", "name"),
    [("/v1/sync/pull", "since"), ("/v1/audit", "before")],
)
def test_integer_parameters_are_bounded_by_what_the_database_holds(
    client: httpx.Client, path: str, name: str
) -> None:
    assert client.get(f"{path}?{name}={MAX_INT}").status_code == 200
    for too_big in (MAX_INT + 1, 2**63, 10**30):
        assert_error(client.get(f"{path}?{name}={too_big}"), 422, "invalid_input")


def test_a_keyring_version_is_bounded(client: httpx.Client) -> None:
    body = {"blob": "AAAA", "expected_version": 2**63}
    assert_error(client.put("/v1/keyring", json=body), 422, "invalid_input")
    stale = client.put("/v1/keyring", json={**body, "expected_version": MAX_INT})
    assert_error(stale, 409, "conflict")


DEEP = b"[" * 100_000  # 100 KB, well under the body limit


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/sync/push"), ("PUT", "/v1/keyring"), ("POST", "/v1/devices")],
)
def test_deeply_nested_json_is_invalid_input(client: httpx.Client, method: str, path: str) -> None:
    response = client.request(
        method, path, content=DEEP, headers={"Content-Type": "application/json"}
    )
    assert "JSON" in assert_error(response, 422, "invalid_input")
    assert latest_seq(client) == 0


def test_a_405_names_every_method_of_the_path(client: httpx.Client) -> None:
    response = client.options("/v1/keyring")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, PUT"
    assert client.patch("/v1/auth/keys").headers["allow"] == "GET, POST"


def test_the_document_states_the_real_contract(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    push = paths["/v1/sync/push"]["post"]
    body = push["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["mutations"]["items"]["properties"]["hlc"]["pattern"]
    seq = body["properties"]["mutations"]["items"]["properties"]["seq"]["anyOf"][0]
    assert seq["minimum"] == 0  # the range the protocol applies (a negative seq is refused):
    negative = client.post("/v1/sync/push", json={"mutations": [{**mutation(1), "seq": -1}]})
    assert_error(negative, 422, "invalid_input")
    assert {"401", "403", "413", "422", "429"} <= set(push["responses"])
    assert set(paths["/v1/keyring"]["get"]["responses"]) >= {"200", "401", "404"}
    metrics = paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert (
        "text/plain; version=0.0.4; charset=utf-8" in metrics and "application/json" not in metrics
    )
    made = client.post("/v1/auth/keys", json={"name": "laptop", "scopes": ["read"]})
    assert made.status_code == 201  # and the name rule the document states is the one applied:
    blank = client.post("/v1/auth/keys", json={"name": " ", "scopes": ["read"]})
    assert_error(blank, 422, "invalid_input")
