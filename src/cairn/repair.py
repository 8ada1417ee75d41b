"""Repairing a damaged store: a new store from every row the damaged one still holds.

The damaged file is kept aside.

The rows are read by ``cairn.store.salvage`` and written through the store's own code paths
(the bulk insert a pull uses), so the keyword index and the vectors are rebuilt with them;
memories whose vector was lost are embedded again, and (``Store.relink_topics``, once every
memory is back) topic chains are linked again. The outbox is
not copied: the first sync after a repair sends everything again (the remote's record of what
was sent is the sync target, which is not copied either) and, with ``RESTORE`` set, reads the
whole remote, this device's own changes included, so what the damage took comes back.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cairn import vector_bytes
from cairn.embedding.base import Embedder
from cairn.errors import NotFound, SchemaTooNew, StoreError
from cairn.hlc import HLC
from cairn.model import Filters
from cairn.replication import MemoryState
from cairn.store import clock, outbox, replica, salvage, search_queries
from cairn.store.db import Database
from cairn.store.migrations import MIGRATIONS
from cairn.store.sync_state import KEYRING, RESTORE

KEPT_META = {"device_id": r"[0-9a-f]{16}", KEYRING: r"[A-Za-z0-9+/]+={0,2}"}
"""What of the old store's meta carries over (if it reads as what it should be): who this device
is, and its cached keyring. Sync cursors, the sync target, leases and worker status are left
behind on purpose."""
_CHUNK = 2000


@dataclass
class RepairReport:
    """What ``repair`` found and did; counts are rows."""

    status: str
    """``healthy`` (nothing done) or ``repaired``."""
    path: str
    problems: list[str] = field(default_factory=list)
    """What SQLite's integrity check said (its first lines)."""
    damaged_copy: str | None = None
    memories_recovered: int = 0
    memories_lost: int = 0
    relations_recovered: int = 0
    relations_lost: int = 0
    rows_lost: int = 0
    """Rows that the store's indexes show existed and could not be read, in every table."""
    re_embedded: int = 0
    """Recovered memories whose vector was lost, embedded again."""
    memories_now: int = 0


def repair(path: Path, embedder: Embedder, force: bool = False) -> RepairReport:
    """Check the store at ``path``; if damaged (or ``force``), rebuild it from what is readable.

    The damaged file (with its WAL) is copied to ``<name>.damaged-<UTC time>`` before anything
    else, and replaced only once the new store is complete, so an interrupted repair leaves the
    damaged store where it was. Processes that have the store open keep the old file: stop them
    first.
    """
    if not path.is_file():
        raise NotFound(f"no store at {path}; nothing to repair")
    version = salvage.schema_version(path)
    if version is not None and version > len(MIGRATIONS):
        raise SchemaTooNew(
            f"{path} was written by a newer Cairn (schema {version}); repair it with that "
            "version (`pip install -U cairn-memory`)"
        )
    problems = salvage.check(path)
    if not problems and not force:
        return RepairReport("healthy", str(path))
    aside = _aside_name(path)
    fresh = path.with_name(path.name + ".repairing")
    try:
        _copy(path, aside)
        found = salvage.read(aside)
        _remove(fresh)
        report = _rebuild(fresh, found, embedder)
        wal, shm = _sidecars(fresh)
        if wal.exists() and wal.stat().st_size:
            raise StoreError(
                f"{fresh} was left with unwritten changes (another process opened it?); "
                "stop other `cairn` processes and run `cairn repair` again"
            )
        wal.unlink(missing_ok=True)
        shm.unlink(missing_ok=True)
        for sidecar in _sidecars(path):  # they belong to the damaged file (copied aside)
            sidecar.unlink(missing_ok=True)
        os.replace(fresh, path)
        _sidecars(aside)[1].unlink(missing_ok=True)  # made by the read-only open
    except OSError as exc:
        raise StoreError(
            f"could not repair {path}: {exc}; free some disk space or fix the folder's "
            "permissions, then run `cairn repair` again"
        ) from exc
    report.path, report.problems, report.damaged_copy = str(path), problems, str(aside)
    return report


def _rebuild(target: Path, found: salvage.Salvaged, embedder: Embedder) -> RepairReport:
    """Write ``found`` into a new store at ``target``; the report of what it holds."""
    db = Database(target)
    try:
        with db.write() as conn:
            for key, pattern in KEPT_META.items():
                value = found.meta.get(key)
                if value is not None and re.fullmatch(pattern, value, re.ASCII):
                    replica.set_meta(conn, key, value)
            clocks = [found.meta.get("hlc")] + [s.hlc for s in found.memories]
            clocks += [r.hlc for r in found.relations]
            for seen in _valid_clocks(clocks):
                clock.observe_hlc(conn, seen)  # new changes must order after every old one
            states = [_checked_vector(s, embedder) for s in found.memories]
            for start in range(0, len(states), _CHUNK):
                replica.insert_states(conn, states[start : start + _CHUNK])
            for relation in found.relations:
                replica.put_relation(conn, relation)
            outbox.restore_dead_letters(conn, found.dead_letters)
            replica.set_meta(conn, RESTORE, "1")
            missing = replica.without_vector(conn)
        embedded = _embed(db, embedder, missing)
        with db.read() as conn:
            now = search_queries.count_live(conn, Filters())
    finally:
        db.close()
    lost = found.lost
    return RepairReport(
        "repaired",
        str(target),
        memories_recovered=len(found.memories),
        memories_lost=lost.get("memories", 0),
        relations_recovered=len(found.relations),
        relations_lost=lost.get("relations", 0),
        rows_lost=sum(lost.values()),
        re_embedded=embedded,
        memories_now=now,
    )


def _checked_vector(state: MemoryState, embedder: Embedder) -> MemoryState:
    """The state, without its vector when that cannot be one of this model's (it is embedded
    again); vectors of another model are kept, as the old store kept them."""
    vector = state.vector
    if vector is None or state.memory.model_id != embedder.model_id:
        return state
    if len(vector) == embedder.dim * 4 and np.isfinite(np.frombuffer(vector, "<f4")).all():
        return state
    return MemoryState(
        state.memory, state.created_hlc, state.field_hlc, state.ancestors, None, state.revisions
    )


def _embed(db: Database, embedder: Embedder, missing: list[tuple[str, str, str]]) -> int:
    for start in range(0, len(missing), 256):
        batch = missing[start : start + 256]
        vectors = embedder.embed([content for _id, content, _hash in batch])
        with db.write() as conn:
            for (memory_id, _content, digest), vector in zip(batch, vectors, strict=True):
                blob = vector_bytes.stored(vector)
                replica.set_vector(conn, memory_id, digest, embedder.model_id, blob)
    return len(missing)


def _valid_clocks(values: Iterable[str | None]) -> list[str]:
    best: str | None = None
    for value in values:
        if value is None:
            continue
        try:
            HLC.unpack(value)
        except ValueError:
            continue
        if best is None or HLC.unpack(value) > HLC.unpack(best):
            best = value
    return [best] if best is not None else []


def _aside_name(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    candidate = path.with_name(f"{path.name}.damaged-{stamp}")
    number = 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}.damaged-{stamp}-{number}")
    return candidate


def _sidecars(path: Path) -> tuple[Path, Path]:
    """The WAL and shared-memory files SQLite keeps next to a store in WAL mode."""
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def _copy(source: Path, target: Path) -> None:
    """Copy a store and its WAL, as they are on disk."""
    shutil.copyfile(source, target)
    wal = _sidecars(source)[0]
    if wal.exists():
        shutil.copyfile(wal, _sidecars(target)[0])


def _remove(path: Path) -> None:
    """Remove a store file and its sidecars (what an interrupted repair left)."""
    path.unlink(missing_ok=True)
    for sidecar in _sidecars(path):
        sidecar.unlink(missing_ok=True)
