"""A workspace moved between servers: exported as JSON Lines, imported as hostile input.

The file is one JSON object per line: a header (format, version, the workspace, its last seq,
its quota), then its keyring versions oldest first, its devices, its mutations in seq order
exactly as stored (still sealed in an end-to-end workspace, seqs kept so devices' cursors stay
valid), and an end line with the counts, so a cut-off file is refused. API keys are not in it:
the operator issues new ones on the new server. A hosted workspace's search index is not
either: the new server folds it again from the log.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from typing import IO, Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cairn.errors import InvalidInput, MutationRejected
from cairn.model import MAX_INT
from cairn.protocol import (
    HOSTED,
    ID_PATTERN,
    MAX_PAYLOAD_BYTES,
    MAX_SEQ,
    KeyringBlob,
    KeyringProof,
    WireMutation,
    from_json,
    problem,
)
from cairn.server import hosted
from cairn.server.storage import Device, Quota, ServerStorage, Workspace

FORMAT = "cairn-workspace"
FORMAT_VERSION = 1
MAX_LINE = MAX_PAYLOAD_BYTES * 2 + 64 * 1024
"""The longest line read: a mutation's base64 payload at its largest, with room to spare."""
_PAGE = 1000
_B64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
_M = TypeVar("_M", bound=BaseModel)
_Time = Annotated[int, Field(ge=0, le=MAX_INT, strict=True)]


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _WorkspaceLine(_Line):
    id: str = Field(pattern=ID_PATTERN)
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    mode: Literal["e2e", "hosted"]
    created_at: _Time


class _QuotaLine(_Line):
    max_mutations: _Time | None
    max_bytes: _Time | None


class _Header(_Line):
    format: Literal["cairn-workspace"]
    version: Literal[1]
    exported_at: _Time
    workspace: _WorkspaceLine
    latest_seq: Annotated[int, Field(ge=0, le=MAX_SEQ, strict=True)]
    quota: _QuotaLine


class _KeyringLine(_Line):
    type: Literal["keyring"]
    version: Annotated[int, Field(ge=1, le=MAX_INT, strict=True)]
    blob: str = Field(pattern=_B64, max_length=MAX_PAYLOAD_BYTES * 2)
    revoked: list[Annotated[int, Field(ge=0, le=0xFFFFFFFF, strict=True)]] = Field(
        max_length=10_000
    )
    signature: str | None = Field(pattern=r"^[0-9a-f]{128}$")
    verify_key: str | None = Field(pattern=r"^[0-9a-f]{64}$")
    signed_version: Annotated[int, Field(ge=1, le=MAX_INT, strict=True)] | None


class _DeviceLine(_Line):
    type: Literal["device"]
    device_id: str = Field(pattern=ID_PATTERN)
    name: str = Field(pattern=r"^[^\x00-\x1f\x7f-\x9f]*$", max_length=200)
    first_seen: _Time
    last_seen: _Time
    pushed: _Time
    last_push_at: _Time | None
    last_pull_at: _Time | None


class _EndLine(_Line):
    type: Literal["end"]
    keyrings: _Time
    devices: _Time
    mutations: _Time


def export(storage: ServerStorage, workspace: Workspace, now: int) -> Iterator[str]:
    """The workspace as lines of the file (each without its newline), read page by page from
    one snapshot: what was stored when the export began (a push, a keyring version or a
    compaction during it is left for the next export)."""
    with storage.exported(workspace.id) as found:
        quota = found.quota
        yield _dump(
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "exported_at": now,
                "workspace": {
                    "id": workspace.id,
                    "name": workspace.name,
                    "mode": workspace.mode,
                    "created_at": workspace.created_at,
                },
                "latest_seq": found.latest_seq,
                "quota": {"max_mutations": quota.max_mutations, "max_bytes": quota.max_bytes},
            }
        )
        for ring in found.keyrings:
            proof = ring.proof
            yield _dump(
                {
                    "type": "keyring",
                    "version": ring.version,
                    "blob": base64.b64encode(ring.blob).decode("ascii"),
                    "revoked": list(ring.revoked),
                    "signature": proof.signature.hex() if proof else None,
                    "verify_key": proof.verify_key.hex() if proof else None,
                    "signed_version": proof.version if proof else None,
                }
            )
        for device in found.devices:
            yield _dump({"type": "device", **_without_position(device)})
        count = 0
        for mutation in found.mutations:
            count += 1
            yield _dump({"type": "mutation", **mutation.to_json()})
    yield _dump(
        {
            "type": "end",
            "keyrings": len(found.keyrings),
            "devices": len(found.devices),
            "mutations": count,
        }
    )


def read(
    source: IO[str], storage: ServerStorage, now: int, by: str
) -> tuple[Workspace, dict[str, int]]:
    """Import the file ``source`` holds into ``storage``: every line checked as hostile input
    while one transaction adds what it holds; nothing is added when any line is wrong."""
    lines = _lines(source)
    number, first = next(lines, (1, ""))
    header = _parse(_Header, first, number, "the header")
    w = header.workspace
    workspace = Workspace(w.id, w.name, w.mode, w.created_at)
    quota = Quota(header.quota.max_mutations, header.quota.max_bytes)
    records = _records(lines, workspace.mode, header.latest_seq)
    counts = storage.import_workspace(workspace, quota, header.latest_seq, records, now, by)
    return workspace, counts


def _records(
    lines: Iterable[tuple[int, str]], mode: str, latest: int
) -> Iterator[KeyringBlob | Device | WireMutation]:
    """Each line's record, checked; InvalidInput naming the first wrong line."""
    stage, last_version, last_seq = 0, 0, 0
    counts = {"keyring": 0, "device": 0, "mutation": 0}
    order = ("keyring", "device", "mutation", "end")
    for number, line in lines:
        data = _json(line, number)
        kind = data.get("type") if isinstance(data, dict) else None
        if kind not in order:
            raise _bad(number, "a record's type must be keyring, device, mutation or end")
        if order.index(kind) < stage:
            raise _bad(number, f"a {kind} record after the {order[stage]}s")
        stage = order.index(kind)
        if kind == "end":
            end = _parse(_EndLine, line, number, "the end line")
            found = {"keyrings": counts["keyring"], "devices": counts["device"]}
            found["mutations"] = counts["mutation"]
            if end.model_dump(exclude={"type"}) != found:
                raise _bad(
                    number, f"the end line counts {end.model_dump()}, the file holds {found}"
                )
            if next(iter(lines), None) is not None:
                raise _bad(number + 1, "nothing may follow the end line")
            return
        counts[kind] += 1
        if kind == "keyring":
            ring = _parse(_KeyringLine, line, number, "a keyring version")
            if ring.version != last_version + 1:
                raise _bad(number, f"keyring version {ring.version} after {last_version}")
            last_version = ring.version
            yield _keyring(ring, number)
        elif kind == "device":
            device = _parse(_DeviceLine, line, number, "a device")
            yield Device(**device.model_dump(exclude={"type"}))
        else:
            mutation = _mutation(data, number, mode)
            seq = mutation.seq or 0
            if not last_seq < seq <= latest:
                raise _bad(number, f"seq {seq} after {last_seq} (the header's last is {latest})")
            last_seq = seq
            yield mutation
    raise InvalidInput(
        "the export ends before its end line: it was cut off; nothing was imported (export it "
        "again)"
    )


def _keyring(ring: _KeyringLine, number: int) -> KeyringBlob:
    proofs = (ring.signature, ring.verify_key, ring.signed_version)
    if any(p is None for p in proofs) and any(p is not None for p in proofs):
        raise _bad(number, "a keyring version has part of a proof; give all of it or none")
    proof = None
    if ring.signature and ring.verify_key and ring.signed_version:
        signature, verify_key = bytes.fromhex(ring.signature), bytes.fromhex(ring.verify_key)
        proof = KeyringProof(signature, verify_key, ring.signed_version)
    blob = base64.b64decode(ring.blob, validate=True)
    return KeyringBlob(blob, ring.version, tuple(ring.revoked), proof)


def _mutation(data: dict[str, Any], number: int, mode: str) -> WireMutation:
    body = {k: v for k, v in data.items() if k != "type"}
    if "seq" not in body:
        raise _bad(number, "a mutation has no seq")
    try:
        mutation = from_json(body)
        found = problem(mutation, sealed=mode != HOSTED)
        if found is not None:
            raise InvalidInput(found[1])
        if mode == HOSTED:
            hosted.readable([mutation])
    except (InvalidInput, MutationRejected) as exc:
        raise _bad(number, str(exc)) from exc
    return mutation


def _lines(source: IO[str]) -> Iterator[tuple[int, str]]:
    number = 0
    while True:
        line = source.readline(MAX_LINE + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE:
            raise _bad(number, f"the line is longer than {MAX_LINE} characters")
        yield number, line.rstrip("\n")


def _json(line: str, number: int) -> Any:
    try:
        return json.loads(line)
    except ValueError as exc:
        raise _bad(number, f"not JSON ({exc})") from exc


def _parse(model: type[_M], line: str, number: int, what: str) -> _M:
    try:
        return model.model_validate_json(line)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise _bad(number, f"{what} is not valid: {where}: {error['msg']}") from exc


def _bad(number: int, reason: str) -> InvalidInput:
    return InvalidInput(f"line {number} of the export: {reason}; nothing was imported")


def _dump(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"))


def _without_position(device: Device) -> dict[str, object]:
    """A device's line: format 1 carries no read position (the new server learns it at the
    device's next pull)."""
    return {k: v for k, v in vars(device).items() if k != "read_position"}
