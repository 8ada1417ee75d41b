"""The sync routes in the binary form: who gets which format, and hostile binary bodies refused
with a clear error and nothing stored (on each storage backend)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import pytest

from cairn import binary_pages
from cairn.binary_pages import MEDIA_TYPE, pack_push, unpack_page
from cairn.protocol import MAX_BATCH, WireMutation, page_from_json
from cairn.remotes.http import HttpRemote

from ..conftest import envelope
from .test_requests import assert_error, latest_seq, wire

SyncServer = Any  # the tests/conftest.py fixture's type (conftest modules are not importable)
BINARY = {"Content-Type": MEDIA_TYPE}


@pytest.fixture
def client(sync_server: SyncServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {sync_server.admin_key}"}
    with httpx.Client(base_url=sync_server.url, headers=headers, timeout=30) as c:
        yield c


def _row(m: WireMutation, **changes: Any) -> list[Any]:
    fields = {
        "v": m.version,
        "mutation_id": m.mutation_id,
        "device_id": m.device_id,
        "hlc": m.hlc,
        "entity_id": m.entity_id,
        "scope": m.scope,
        "payload": m.payload,
    }
    return list({**fields, **changes}.values())


def _body(*rows: list[Any]) -> bytes:
    packed: bytes = msgpack.packb({"mutations": list(rows)}, use_bin_type=True)
    return packed


def test_a_binary_push_is_stored_and_served_in_either_form(client: httpx.Client) -> None:
    batch = [wire(1), wire(2, bytes(range(256)))]
    pushed = client.post("/v1/sync/push", content=pack_push(batch), headers=BINARY)
    assert pushed.status_code == 200 and pushed.json()["stored"] == 2
    assert pushed.headers["content-type"] == "application/json"  # the answer stays JSON

    binary = client.get("/v1/sync/pull", headers={"Accept": f"{MEDIA_TYPE}, */*;q=0.1"})
    assert binary.headers["content-type"] == MEDIA_TYPE and binary.headers["vary"] == "Accept"
    as_json = client.get("/v1/sync/pull")  # httpx sends Accept: */*, as a client before it
    assert as_json.headers["content-type"] == "application/json"
    assert unpack_page(binary.content) == page_from_json(as_json.json())
    assert [m.payload for m in unpack_page(binary.content).mutations] == [m.payload for m in batch]
    assert len(binary.content) < len(as_json.content)


def test_a_json_push_is_served_in_binary_and_a_binary_one_as_json(client: httpx.Client) -> None:
    client.post("/v1/sync/push", json={"mutations": [wire(1).to_json()]})
    client.post("/v1/sync/push", content=pack_push([wire(2)]), headers=BINARY)
    page = unpack_page(client.get("/v1/sync/pull", headers={"Accept": MEDIA_TYPE}).content)
    assert [(m.mutation_id, m.seq) for m in page.mutations] == [("m-1", 1), ("m-2", 2)]
    old = client.get("/v1/sync/pull", headers={"Accept": "application/json"}).json()
    assert [m["mutation_id"] for m in old["mutations"]] == ["m-1", "m-2"]


def test_an_old_json_client_is_served_as_before(sync_server: SyncServer) -> None:
    new = HttpRemote(sync_server.url, sync_server.admin_key)
    old = HttpRemote(sync_server.url, sync_server.admin_key, binary=False)
    new.push([wire(1)])
    old.push([wire(2)])
    assert [m.mutation_id for m in old.pull(None).mutations] == ["m-1", "m-2"]
    assert old.pages == "application/json" and new.pages == MEDIA_TYPE
    for remote in (new, old):
        remote.close()


GOOD = wire(1)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"\xc1\x00", "not valid application/vnd.cairn.page+msgpack"),
        (pack_push([GOOD])[:-4], "not valid"),  # cut short
        (json.dumps({"mutations": [GOOD.to_json()]}).encode(), "not valid"),  # JSON, mislabelled
        (b"\x81\xa9mutations" + b"\x91" * 5000 + b"\xc0", "not valid"),  # nested deep
        (_body(_row(GOOD, payload="c2VhbGVk")), "payload must be a bin"),  # base64, not bytes
        (_body(_row(GOOD, v=True)), "version"),
        (_body(_row(GOOD, hlc=1_700_000_000_000)), "strings"),
        (_body(_row(GOOD)[:5]), "array of 7 fields"),
        (_body(_row(GOOD, mutation_id="m" * 5000)), "not valid"),  # past the string bound
        (_body(_row(GOOD, payload=msgpack.ExtType(1, b"x" * 8))), "not valid"),
        (msgpack.packb({"mutations": [None] * (MAX_BATCH + 1)}), "not valid"),
        (msgpack.packb({"mutations": [], "more": 1}), "map"),
    ],
)
def test_malformed_binary_pushes_are_invalid_input_and_store_nothing(
    client: httpx.Client, body: bytes, says: str
) -> None:
    response = client.post("/v1/sync/push", content=body, headers=BINARY)
    assert says in assert_error(response, 422, "invalid_input")
    assert latest_seq(client) == 0


@pytest.mark.parametrize(
    ("row", "code"),
    [
        (_row(GOOD, payload=b"not an envelope"), "unsealed_payload"),
        (_row(GOOD, mutation_id="m-1\n"), "invalid_mutation"),
        (_row(GOOD, scope="ABCDEF01"), "invalid_mutation"),
        (_row(GOOD, v=2), "unsupported_version"),
        (_row(GOOD, payload=envelope(b"x", key_id=0)), None),  # a fine one beside them
    ],
)
def test_a_refused_binary_mutation_refuses_the_batch_by_id(
    client: httpx.Client, row: list[Any], code: str | None
) -> None:
    other = _row(wire(9))
    response = client.post("/v1/sync/push", content=_body(other, row), headers=BINARY)
    if code is None:
        assert response.status_code == 200
        return
    assert_error(response, 422, "invalid_mutation")
    rejected = response.json()["error"]["rejected"]
    assert [(r["mutation_id"], r["code"]) for r in rejected] == [(row[1], code)]
    assert latest_seq(client) == 0


def test_the_document_names_the_binary_form(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    push = paths["/v1/sync/push"]["post"]["requestBody"]["content"]
    pull = paths["/v1/sync/pull"]["get"]["responses"]["200"]["content"]
    assert set(push) == set(pull) == {"application/json", binary_pages.MEDIA_TYPE}
