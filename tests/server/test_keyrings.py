"""The sync server's keyring rules: after the first version, only a proof by the workspace's
master key changes the keyring; every version is kept; an administrator rolls back; a workspace
made before keyrings were signed keeps working and is signed by its next device."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cairn.crypto import keyring
from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.remotes.http import HttpRemote
from cairn.store.db import Database
from cairn.sync.envelopes import Envelopes
from cairn.sync.keys import join, open_keys
from cairn.sync.trust import keyring_problem

from ..conftest import SyncServer, a_keyring

PASSPHRASE = "a passphrase for tests"


def put(server: SyncServer, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.put(
        f"{server.url}/v1/keyring", json=body, headers={"Authorization": f"Bearer {key}"}
    )


def body(
    ring: keyring.Keyring,
    expected: int | None,
    revoked: list[int] | None = None,
    master: bytes | None = None,
    version: int | None = None,
) -> dict[str, Any]:
    blob = ring.to_bytes()
    made: dict[str, Any] = {
        "blob": base64.b64encode(blob).decode(),
        "expected_version": expected,
        "revoked_key_ids": revoked or [],
    }
    if master is not None:
        number = version if version is not None else (expected or 0) + 1
        proof = keyring.sign(master, ring.keyring_id, number, blob, revoked or [])
        made.update(signature=proof.signature.hex(), verify_key=proof.verify_key.hex())
    return made


def test_after_the_first_version_only_the_master_key_changes_the_keyring(
    sync_server: SyncServer,
) -> None:
    writer, admin = sync_server.new_key(), sync_server.admin_key
    ring, keys = a_keyring(PASSPHRASE)
    assert put(sync_server, writer, body(ring, None, master=keys.master)).json() == {"version": 1}
    rotated, keys = keyring.rotate(ring, keys)
    refused = {
        "unsigned, by a write key": (writer, body(rotated, 1)),
        "unsigned, by an admin key": (admin, body(rotated, 1)),
        "signed by another key": (writer, body(rotated, 1, master=a_keyring()[1].master)),
        "signed for another version": (writer, body(rotated, 1, master=keys.master, version=1)),
        "signed for other revoked ids": (
            writer,
            {**body(rotated, 1, master=keys.master), "revoked_key_ids": [1]},
        ),
    }
    for what, (key, attempt) in refused.items():
        answer = put(sync_server, key, attempt)
        assert answer.status_code == 403, what
        assert answer.json()["error"]["code"] == "keyring_untrusted", what
    garbage = {**body(rotated, 1, master=keys.master), "blob": base64.b64encode(b"x").decode()}
    assert put(sync_server, writer, garbage).json()["error"]["code"] == "invalid_input"
    theirs, their_keys = a_keyring()
    other = put(sync_server, writer, body(theirs, 1, master=their_keys.master))
    assert (other.status_code, other.json()["error"]["code"]) == (409, "key_mismatch")
    current = put(sync_server, writer, body(rotated, 1, [2], master=keys.master))
    assert current.json()["error"]["code"] == "invalid_input"  # never the current key
    stray = put(sync_server, writer, body(rotated, 1, [1, 7], master=keys.master))
    assert stray.json()["error"]["code"] == "invalid_input"  # only key ids of the keyring
    assert put(sync_server, writer, body(rotated, 1, [1], master=keys.master)).json() == {
        "version": 2
    }
    versions = HttpRemote(sync_server.url, sync_server.new_key(["read"])).keyring_versions()
    assert [(v.version, v.revoked) for v in versions] == [(2, (1,)), (1, ())]
    audit = httpx.get(
        f"{sync_server.url}/v1/audit", headers={"Authorization": f"Bearer {admin}"}
    ).json()["entries"]
    puts = [e["detail"] for e in audit if e["action"] == "keyring_put"]
    assert [p["version"] for p in puts] == [2, 1]
    assert puts[1]["pinned_verify_key"] == keyring.verify_key(keys.master).hex()


def test_an_admin_rolls_the_keyring_back_and_devices_take_it(
    sync_server: SyncServer, tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    device = HttpRemote(sync_server.url, sync_server.new_key())
    keys, _recovery = join(device, PASSPHRASE, kdf=a_keyring()[0].kdf)
    Envelopes(device, keys).change_passphrase("a passphrase nobody remembers")
    rollback = f"{sync_server.url}/v1/keyring/rollback"

    def roll(key: str, version: int) -> httpx.Response:
        return httpx.post(
            rollback, json={"version": version}, headers={"Authorization": f"Bearer {key}"}
        )

    assert roll(sync_server.new_key(), 1).status_code == 403  # a write key may not
    assert roll(sync_server.admin_key, 2).json()["error"]["code"] == "invalid_input"
    assert roll(sync_server.admin_key, 1).json() == {"version": 3, "restored": 1}
    restored = device.get_keyring()
    assert restored is not None and restored.version == 3
    assert restored.proof is not None and restored.proof.version == 1  # its own proof
    # Devices take it, and the passphrase of version 1 joins again.
    with Store(Database(tmp_path / "a.db"), embedder) as store:
        assert open_keys(store, device, keys.master, keys.keyring_id) == keys
        assert keyring_problem(store) is None
    assert join(HttpRemote(sync_server.url, sync_server.new_key()), PASSPHRASE)[0] == keys
    log = sync_server.storage.audit_log(sync_server.workspace.id, 10, None)
    assert log[0].action == "keyring_rollback"
    assert log[0].detail["restored"] == 1 and log[0].detail["replaced"] == 2


def test_a_workspace_made_before_keyrings_were_signed_is_signed_by_its_next_device(
    sync_server: SyncServer, tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    ring, keys = a_keyring(PASSPHRASE)
    # As a server before this change stored it: one version, no proof.
    sync_server.storage.put_keyring(sync_server.workspace.id, ring.to_bytes(), None, ())
    device = HttpRemote(sync_server.url, sync_server.new_key())
    with Store(Database(tmp_path / "a.db"), embedder) as store:
        assert open_keys(store, device, keys.master, keys.keyring_id) == keys
    signed = device.get_keyring()
    assert signed is not None and signed.version == 2 and signed.blob == ring.to_bytes()
    assert keyring.authenticate(signed, keys.master, keys.keyring_id)[1] == keys
    # From now on, a write key without the master key changes nothing.
    forger = Ed25519PrivateKey.generate()
    rotated, _ = keyring.rotate(ring, keys)
    forged = {
        **body(rotated, 2, [1]),
        "signature": forger.sign(b"x").hex(),
        "verify_key": forger.public_key().public_bytes_raw().hex(),
    }
    assert put(sync_server, sync_server.new_key(), forged).status_code == 403
    assert join(HttpRemote(sync_server.url, sync_server.new_key()), PASSPHRASE)[0] == keys
