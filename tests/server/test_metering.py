"""Metering, quotas and the audit log through real HTTP, on each storage backend."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from cairn.errors import Forbidden, QuotaExceeded
from cairn.protocol import WireMutation
from cairn.remotes.http import HttpRemote
from cairn.server.storage import Quota

from ..conftest import a_keyring, envelope

SyncServer = Any  # the tests/conftest.py fixture's type (conftest modules are not importable)


def wire(n: int) -> WireMutation:
    return WireMutation(
        f"m-{n}", "dev-a", f"{1_700_000_000_000 + n:013d}-0000-dev-a", f"e-{n}", None, envelope()
    )


def get(server: SyncServer, path: str, key: str) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", headers={"Authorization": f"Bearer {key}"})


def test_usage_and_the_audit_log_are_for_admins(sync_server: SyncServer) -> None:
    writer_key = sync_server.new_key(["write"])
    writer = HttpRemote(sync_server.url, writer_key, device_id="dev-a")
    writer.push([wire(1), wire(2)])
    writer.push([wire(2)])  # a retry: metered as a push that stored nothing
    writer.register_device("dev-a", "laptop")
    writer.put_keyring(a_keyring()[0].to_bytes(), None)
    first = writer.pull(None)
    assert len(first.mutations) == 2
    assert writer.pull(first.cursor).mutations == []  # an empty pull: not audited
    for path in ("/v1/usage", "/v1/audit"):
        assert get(sync_server, path, writer_key).status_code == 403
    usage = get(sync_server, "/v1/usage?days=7", sync_server.admin_key).json()
    size = len(wire(1).payload)
    assert (usage["mutations"], usage["stored_bytes"], usage["entities"]) == (2, 2 * size, 2)
    assert usage["quota"] == {"max_mutations": None, "max_bytes": None}
    (today,) = usage["days"]
    assert (today["pushes"], today["mutations"], today["bytes"], today["pulled"]) == (
        2,
        2,
        2 * size,
        2,
    )
    entries = get(sync_server, "/v1/audit", sync_server.admin_key).json()["entries"]
    writer_id = writer_key.split("_")[1]
    assert [(e["action"], e["key_id"]) for e in entries] == [
        ("pull", writer_id),
        ("keyring_put", writer_id),
        ("device_register", writer_id),
        ("push", writer_id),
        ("push", writer_id),
    ]
    assert entries[-1]["detail"] == {"stored": 2, "duplicates": 0, "device": "dev-a"}
    page = get(sync_server, "/v1/audit?limit=2", sync_server.admin_key).json()
    assert len(page["entries"]) == 2 and page["next_before"] == page["entries"][-1]["at_ms"]
    writer.close()


def test_key_management_is_audited(sync_server: SyncServer) -> None:
    admin = {"Authorization": f"Bearer {sync_server.admin_key}"}
    made = httpx.post(
        f"{sync_server.url}/v1/auth/keys", headers=admin, json={"name": "ci", "scopes": ["read"]}
    ).json()
    httpx.delete(f"{sync_server.url}/v1/auth/keys/{made['id']}", headers=admin)
    entries = get(sync_server, "/v1/audit", sync_server.admin_key).json()["entries"]
    assert [(e["action"], e["detail"]) for e in entries] == [
        ("key_revoke", {"revoked": made["id"]}),
        ("key_create", {"created": made["id"], "name": "ci", "scopes": ["read"]}),
    ]


def test_a_push_over_quota_is_429_quota_exceeded_and_stores_nothing(
    sync_server: SyncServer,
) -> None:
    sync_server.storage.set_quota(sync_server.workspace.id, Quota(max_mutations=2))
    remote = HttpRemote(sync_server.url, sync_server.admin_key)
    remote.push([wire(1)])
    response = httpx.post(
        f"{sync_server.url}/v1/sync/push",
        headers={"Authorization": f"Bearer {sync_server.admin_key}"},
        json={"mutations": [wire(2).to_json(), wire(3).to_json()]},
    )
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "quota_exceeded"
    with pytest.raises(QuotaExceeded, match="set-quota"):
        remote.push([wire(2), wire(3)])
    assert remote.status()["latest_seq"] == 1
    with pytest.raises(Forbidden):
        HttpRemote(sync_server.url, sync_server.new_key(["read"])).push([wire(2)])
    remote.close()
