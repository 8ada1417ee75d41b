"""Seal/open throughput of sync payloads, and the cost of unlocking a keyring.

Payloads are real memory states as sync sends them (``cairn.sync.payload``): corpus text,
tags and a 384-d float32 vector, ~2.1 KB each. Reported: µs per payload and MB/s to seal and to
open as sync does it (one ``Sealer`` and one ``Opener`` per sync session: one key derivation per
sealer), and one payload at a time (a derivation each), the size overhead of the envelope, and
Argon2id key derivation at the default parameters.

    .venv/bin/python bench/bench_crypto.py [--items 10000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import corpus
from cairn.crypto import keyring
from cairn.crypto.seal import Opener, Sealer, open_sealed, seal
from cairn.model import Memory
from cairn.replication import MemoryState
from cairn.sync.payload import encode_memory
from common import print_table, write_results


def payloads(n: int) -> list[bytes]:
    rng = np.random.default_rng(7)
    out = []
    for i, item in enumerate(corpus.items(n)):
        vector = rng.standard_normal(384).astype("<f4").tobytes()
        memory = Memory(
            id=f"01a20000-0000-7000-8000-{i:012d}",
            content=item.content,
            kind=item.kind,
            project=item.project,
            tags=tuple(item.tags),
            topic_key=None,
            source="bench",
            created_at=1_795_000_000_000 + i,
            updated_at=1_795_000_000_000 + i,
            deleted=False,
            content_hash="0" * 64,
            model_id="minilm",
            hlc=f"{1_795_000_000_000 + i:013d}-0000-bench",
        )
        out.append(encode_memory(MemoryState(memory, memory.hlc, {}, (), vector)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="1,000 items, to check the script")
    args = parser.parse_args()
    n = 1_000 if args.quick else args.items
    plain = payloads(n)
    key = os.urandom(32)
    aads = [f"workspace|01a20000-0000-7000-8000-{i:012d}|mutation-{i}".encode() for i in range(n)]

    start = time.perf_counter()
    sealer = Sealer(key, 1)
    sealed = [sealer.seal(p, a) for p, a in zip(plain, aads, strict=True)]
    seal_s = time.perf_counter() - start
    start = time.perf_counter()
    opener = Opener(lambda _id: key)
    opened = [opener.open(s, a) for s, a in zip(sealed, aads, strict=True)]
    open_s = time.perf_counter() - start
    assert opened == plain

    start = time.perf_counter()
    single = [seal(key, 1, p, a) for p, a in zip(plain, aads, strict=True)]
    seal_one_s = time.perf_counter() - start
    start = time.perf_counter()
    opened = [open_sealed(lambda _id: key, s, a) for s, a in zip(single, aads, strict=True)]
    open_one_s = time.perf_counter() - start
    assert opened == plain

    plain_bytes = sum(map(len, plain))
    sealed_bytes = sum(map(len, sealed))
    start = time.perf_counter()
    ring, unlocked, _recovery = keyring.create("a benchmark passphrase")
    create_s = time.perf_counter() - start
    start = time.perf_counter()
    keyring.unlock(ring, passphrase="a benchmark passphrase")
    unlock_s = time.perf_counter() - start

    rows = [
        [
            "seal (Sealer, as sync)",
            round(seal_s / n * 1e6, 1),
            round(plain_bytes / seal_s / 1e6, 1),
        ],
        [
            "open (Opener, as sync)",
            round(open_s / n * 1e6, 1),
            round(plain_bytes / open_s / 1e6, 1),
        ],
        ["seal one", round(seal_one_s / n * 1e6, 1), round(plain_bytes / seal_one_s / 1e6, 1)],
        ["open one", round(open_one_s / n * 1e6, 1), round(plain_bytes / open_one_s / 1e6, 1)],
    ]
    print_table(
        f"Sealing {n:,} sync payloads ({plain_bytes / n:,.0f} B each on average)",
        ["step", "µs per payload", "MB/s"],
        rows,
    )
    print(
        f"\nsealed size: {sealed_bytes / plain_bytes:.3f}x the plaintext "
        f"({(sealed_bytes - plain_bytes) / n:+.0f} B per payload: header and tag)"
    )
    print(
        f"keyring: create {create_s * 1000:.0f} ms, unlock with the passphrase "
        f"{unlock_s * 1000:.0f} ms (Argon2id, {ring.kdf.memory_kib // 1024} MiB, "
        f"{ring.kdf.iterations} passes, {ring.kdf.lanes} lanes)"
    )
    write_results(
        "bench_crypto",
        vars(args),
        {
            "items": n,
            "payload_bytes_mean": plain_bytes / n,
            "seal_us": seal_s / n * 1e6,
            "open_us": open_s / n * 1e6,
            "seal_mb_s": plain_bytes / seal_s / 1e6,
            "open_mb_s": plain_bytes / open_s / 1e6,
            "seal_one_us": seal_one_s / n * 1e6,
            "open_one_us": open_one_s / n * 1e6,
            "sealed_to_plain": sealed_bytes / plain_bytes,
            "keyring_create_ms": create_s * 1000,
            "keyring_unlock_ms": unlock_s * 1000,
            "kdf": {"memory_kib": ring.kdf.memory_kib, "iterations": ring.kdf.iterations},
            "scope_key_derived": len(unlocked.scope_key) == 32,
        },
    )


if __name__ == "__main__":
    main()
