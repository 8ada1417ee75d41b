"""The keyring: create, join by passphrase or recovery key, change passphrase, rotate."""

from __future__ import annotations

import pytest

from cairn.crypto import keyring as kr
from cairn.crypto.seal import open_sealed, seal
from cairn.errors import CryptoError, InvalidInput, KeyMismatch, WrongPassphrase

FAST = kr.KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)  # tests only


def test_a_second_device_joins_with_the_passphrase_and_a_third_with_the_recovery_key() -> None:
    ring, first, recovery = kr.create("correct horse battery", FAST)
    blob = ring.to_bytes()
    assert b"correct horse" not in blob
    second = kr.unlock(kr.Keyring.from_bytes(blob), passphrase="correct horse battery")
    third = kr.unlock(kr.Keyring.from_bytes(blob), recovery=recovery.lower().replace("-", " "))
    assert first == second == third
    assert first.scope_key == third.scope_key and first.scope_key != first.data_keys[1]


def test_a_wrong_passphrase_or_recovery_key_is_refused_clearly() -> None:
    ring, _unlocked, recovery = kr.create("correct horse battery", FAST)
    with pytest.raises(WrongPassphrase, match="did not unlock"):
        kr.unlock(ring, passphrase="correct horse battery!")
    mistyped = ("B" if recovery[0] != "B" else "C") + recovery[1:]
    with pytest.raises(WrongPassphrase, match="mistyped"):
        kr.unlock(ring, recovery=mistyped)
    with pytest.raises(WrongPassphrase):
        kr.unlock(ring)
    with pytest.raises(InvalidInput, match="at least 8"):  # bad input (exit 2), not a refusal
        kr.create("short", FAST)


def test_changing_the_passphrase_rewraps_only_the_master_key() -> None:
    ring, unlocked, recovery = kr.create("first passphrase", FAST)
    sealed = seal(unlocked.data_keys[1], 1, b"an old memory", b"slot")
    changed = kr.change_passphrase(ring, unlocked, "second passphrase")
    assert changed.data_keys == ring.data_keys  # no data key re-encrypted
    assert len(changed.to_bytes()) < 2048
    with pytest.raises(WrongPassphrase):
        kr.unlock(changed, passphrase="first passphrase")
    again = kr.unlock(changed, passphrase="second passphrase")
    assert open_sealed(again.key, sealed, b"slot") == b"an old memory"
    assert kr.unlock(changed, recovery=recovery) == again


def test_rotation_adds_a_current_key_and_old_payloads_stay_readable() -> None:
    ring, unlocked, _recovery = kr.create("first passphrase", FAST)
    old = seal(unlocked.data_keys[1], 1, b"before rotation", b"s")
    rotated, newer = kr.rotate(ring, unlocked)
    assert (rotated.current, newer.current) == (2, 2)
    fresh = seal(newer.data_keys[2], 2, b"after rotation", b"s")
    joined = kr.unlock(kr.Keyring.from_bytes(rotated.to_bytes()), passphrase="first passphrase")
    assert open_sealed(joined.key, old, b"s") == b"before rotation"
    assert open_sealed(joined.key, fresh, b"s") == b"after rotation"
    assert joined.scope_key == unlocked.scope_key  # scope tags survive rotation


def test_a_keyring_from_another_workspace_is_detected() -> None:
    ring_a, unlocked_a, _ = kr.create("same passphrase", FAST)
    ring_b, _unlocked_b, _ = kr.create("same passphrase", FAST)
    with pytest.raises(KeyMismatch, match="another workspace"):
        kr.open_data_keys(ring_b, unlocked_a.master)
    spliced = kr.Keyring(
        ring_a.keyring_id,
        ring_a.kdf,
        ring_a.master_by_passphrase,
        ring_a.master_by_recovery,
        {1: ring_b.data_keys[1]},
        1,
    )
    with pytest.raises(KeyMismatch):
        kr.unlock(spliced, passphrase="same passphrase")


def test_the_default_key_derivation_is_argon2id_with_64_mib() -> None:
    ring, _unlocked, _ = kr.create("a real passphrase")
    params = kr.Keyring.from_bytes(ring.to_bytes()).kdf
    assert params.memory_kib >= 64 * 1024 and params.iterations >= 3
    assert b'"alg": "argon2id"' in ring.to_bytes()


@pytest.mark.parametrize(
    "blob", [b"not json", b"{}", b'{"format": "cairn-keyring/9"}', b'{"format": "cairn-keyring/1"}']
)
def test_an_unreadable_keyring_is_reported(blob: bytes) -> None:
    with pytest.raises(CryptoError):
        kr.Keyring.from_bytes(blob)
