"""The sync protocol: what a remote stores and returns for each mutation (no I/O).

A remote sees only this envelope: opaque ids, the HLC, the device id, a blind scope tag and the
payload as opaque bytes. What the payload holds (the memory's fields and vector) is the sync
engine's business; the encryption layer seals it without any remote changing.

On the wire (JSON), a mutation is::

    {"v": 1, "mutation_id": "...", "device_id": "...", "hlc": "...", "entity_id": "...",
     "scope": "hex or null", "payload": "base64", "seq": 42}

``seq`` is assigned by the remote when it stores the mutation; pushes omit it. The sync server
also carries the same fields in a binary form (``cairn.binary_pages``), checked by the same rules.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any

from cairn.errors import InvalidInput, MutationRejected

VERSION = 1
"""The mutation envelope version this code reads and writes."""

E2E, HOSTED = "e2e", "hosted"
MODES = (E2E, HOSTED)
"""A workspace's mode: e2e takes sealed envelopes only (the remote cannot read them); hosted
takes plain payloads (its user chose to let the server read them)."""

RELATION_PREFIX = "rel-"
"""How a relation's entity id starts (a memory's is a UUID): the one thing about an entity a
remote can tell, which lets it count memories apart from relations."""

SERVER_DEVICE_PREFIX = "server-"
"""How the device id starts that a sync server writes a hosted workspace's memories under (one
per server process): log retention never takes its states as superseding one another, since a
process's concurrent requests each build a state from what the index held when they began."""

SEALED_VERSION = 1
SEALED_HEADER = struct.Struct(">BI16s12s")
"""A sealed payload starts ``version | key_id | salt | nonce`` and ends with a 16-byte tag
(``cairn.crypto.seal``); a remote may read the version and key id, nothing else."""
SEALED_MIN = SEALED_HEADER.size + 16

API_KEY = re.compile(r"cairn_([0-9a-f]{12})_([A-Za-z0-9_-]{20,200})", re.ASCII)
"""A sync server's API key, matched whole: ``cairn_<key id>_<secret>``."""

MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_BATCH = 10_000
MAX_PULL_LIMIT = 10_000
MAX_SEQ = 2**63 - 1
"""The largest sequence number (a signed 64-bit integer in every database)."""

# Each is matched whole (``fullmatch``: ``$`` would also match before a final newline) and in
# ASCII only (``\d`` would take any script's digits). The patterns are also published in the
# servers' OpenAPI documents, whose regex dialect reads them the same way.
ID_PATTERN = r"^[0-9A-Za-z_.:|-]{1,160}$"
HLC_PATTERN = r"^[0-9]{13}-[0-9a-f]{4}-[0-9A-Za-z_-]{1,64}$"
SCOPE_PATTERN = r"^[0-9a-f]{8,64}$"
_ID = re.compile(ID_PATTERN, re.ASCII)
_HLC = re.compile(HLC_PATTERN, re.ASCII)
_SCOPE = re.compile(SCOPE_PATTERN, re.ASCII)


@dataclass(frozen=True)
class WireMutation:
    """One mutation as a remote stores it."""

    mutation_id: str
    device_id: str
    hlc: str
    entity_id: str
    scope: str | None
    payload: bytes
    seq: int | None = None
    version: int = VERSION

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "v": self.version,
            "mutation_id": self.mutation_id,
            "device_id": self.device_id,
            "hlc": self.hlc,
            "entity_id": self.entity_id,
            "scope": self.scope,
            "payload": base64.b64encode(self.payload).decode("ascii"),
        }
        if self.seq is not None:
            data["seq"] = self.seq
        return data

    def with_seq(self, seq: int) -> WireMutation:
        return WireMutation(
            self.mutation_id,
            self.device_id,
            self.hlc,
            self.entity_id,
            self.scope,
            self.payload,
            seq,
            self.version,
        )


@dataclass(frozen=True)
class PushResult:
    """What a remote did with a pushed batch: every mutation is now durably stored."""

    stored: int
    duplicates: int
    last_seq: int | None = None


@dataclass(frozen=True)
class KeyringProof:
    """That a keyring version was made by a holder of the workspace's master key: an Ed25519
    signature (``cairn.keyring_rules``) over the version numbered ``version``, and the key that
    checks it (published in clear; a device derives its own and trusts only that)."""

    signature: bytes
    verify_key: bytes
    version: int
    """The version the signature names: the stored version's own number, except for a copy an
    administrator restored (a rollback), which keeps the number it was signed under."""


@dataclass(frozen=True)
class KeyringBlob:
    """A workspace's keyring as a remote keeps it: an opaque (encrypted) blob, its
    compare-and-swap version, the key ids it no longer accepts new payloads under (published in
    clear beside the blob, so a remote can refuse them without reading it), and its proof
    (None: made before keyrings were signed)."""

    blob: bytes
    version: int
    revoked: tuple[int, ...] = ()
    proof: KeyringProof | None = None


@dataclass(frozen=True)
class PullPage:
    """Mutations after a cursor, in the remote's order; ``cursor`` resumes after the page."""

    mutations: Sequence[WireMutation]
    cursor: str
    has_more: bool

    @classmethod
    def of(cls, page: Sequence[WireMutation], limit: int, latest: int) -> PullPage:
        """The page of a log numbered by seq whose last seq is ``latest``: a full page resumes
        after its last mutation, any other after ``latest`` (so a cursor never passes a
        mutation the page left out, nor stops short of the scopes filtered away)."""
        last = page[-1].seq if len(page) == limit and page[-1].seq else latest
        return cls(page, str(last), last < latest)


def sealed_key_id(payload: bytes) -> int | None:
    """The key id of a sealed envelope, or None when the payload is not one."""
    if len(payload) < SEALED_MIN or payload[0] != SEALED_VERSION:
        return None
    return int.from_bytes(payload[1:5], "big")


def problem(
    mutation: WireMutation, sealed: bool = True, revoked: Collection[int] = ()
) -> tuple[str, str] | None:
    """Why a remote must refuse this mutation, as (code, message), or None when it is fine.

    ``sealed``: the workspace is end-to-end encrypted, so every payload must be an envelope;
    ``revoked``: key ids the workspace's keyring no longer takes new payloads under.
    """
    if mutation.version != VERSION:
        return "unsupported_version", (
            f"mutation version {mutation.version} is not supported (this end speaks {VERSION})"
        )
    reason = _malformed(mutation)
    if reason is not None:
        return "invalid_mutation", reason
    if not sealed:
        return None
    key_id = sealed_key_id(mutation.payload)
    if key_id is None:
        return "unsealed_payload", (
            f"payload is not a sealed envelope of version {SEALED_VERSION}; this workspace "
            "takes end-to-end encrypted payloads only (upgrade the client that sent it)"
        )
    if key_id in revoked:
        return "revoked_key", (
            f"payload is sealed with key {key_id}, which this workspace revoked; re-read the "
            "keyring and seal it with the current key"
        )
    return None


def _malformed(mutation: WireMutation) -> str | None:
    if not _ID.fullmatch(mutation.mutation_id):
        return "mutation_id must be 1-160 characters of letters, digits and -_.:|"
    if not _ID.fullmatch(mutation.device_id):
        return "device_id must be 1-160 characters of letters, digits and -_.:|"
    if not _ID.fullmatch(mutation.entity_id):
        return "entity_id must be 1-160 characters of letters, digits and -_.:|"
    if not _HLC.fullmatch(mutation.hlc):
        return "hlc is not a packed hybrid logical clock"
    if mutation.scope is not None and not _SCOPE.fullmatch(mutation.scope):
        return "scope must be 8-64 lowercase hex digits (a blind scope tag) or null"
    if len(mutation.payload) > MAX_PAYLOAD_BYTES:
        return f"payload is {len(mutation.payload)} bytes, over the {MAX_PAYLOAD_BYTES} limit"
    return None


def check_batch(
    mutations: Sequence[WireMutation], sealed: bool = True, revoked: Collection[int] = ()
) -> None:
    """Refuse the whole batch (naming each bad mutation) if any mutation is refused."""
    if len(mutations) > MAX_BATCH:
        raise InvalidInput(f"a push takes at most {MAX_BATCH} mutations; split the batch")
    rejected = {}
    for mutation in mutations:
        found = problem(mutation, sealed, revoked)
        if found is not None:
            rejected[mutation.mutation_id] = found
    if rejected:
        first = next(iter(rejected.items()))
        raise MutationRejected(
            f"{len(rejected)} mutation(s) refused, nothing applied; first: {first[0]}: "
            f"{first[1][1]}",
            rejected,
        )


def _whole(value: object) -> int | None:
    """``value`` as an integer when JSON says it is one (``7`` or ``7.0``, as JSON Schema's
    "integer" admits), else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def from_json(data: Any) -> WireMutation:
    """A mutation from its JSON form; InvalidInput when it is not one."""
    if not isinstance(data, dict):
        raise InvalidInput("each mutation must be a JSON object")
    try:
        version = data["v"]
        fields = (data["mutation_id"], data["device_id"], data["hlc"], data["entity_id"])
        scope = data.get("scope")
        payload = binascii.a2b_base64(data["payload"], strict_mode=True)
        seq = data.get("seq")
    except KeyError as exc:
        raise InvalidInput(f"a mutation is missing the field {exc.args[0]!r}") from exc
    except (binascii.Error, TypeError, ValueError) as exc:
        raise InvalidInput("a mutation's payload is not valid base64") from exc
    version = _whole(version)
    if version is None:
        raise InvalidInput("a mutation's v (version) must be an integer")
    if not all(isinstance(f, str) for f in fields):
        raise InvalidInput("mutation_id, device_id, hlc and entity_id must be strings")
    if scope is not None and not isinstance(scope, str):
        raise InvalidInput("a mutation's scope must be a string or null")
    if seq is not None:
        seq = _whole(seq)
        if seq is None or not 0 <= seq <= MAX_SEQ:
            raise InvalidInput(f"a mutation's seq must be an integer from 0 to {MAX_SEQ}")
    return WireMutation(fields[0], fields[1], fields[2], fields[3], scope, payload, seq, version)


_JSON_FRAME = len('{"v":,"mutation_id":,"device_id":,"hlc":,"entity_id":,"scope":,"payload":""}')


def json_size(m: WireMutation) -> int:
    """The bytes ``m`` takes in a JSON push body (``to_json``, written compactly): exact for
    ASCII ids (the only ones ``problem`` admits), more than enough for any other."""
    strings = [m.mutation_id, m.device_id, m.hlc, m.entity_id]
    scope = 4 if m.scope is None else len(_string(m.scope))  # null, or the quoted string
    return (
        _JSON_FRAME
        + len(str(m.version))
        + sum(len(_string(text)) for text in strings)
        + scope
        + 4 * ((len(m.payload) + 2) // 3)  # base64
    )


def page_body(mutations: Sequence[WireMutation], cursor: str, has_more: bool) -> bytes:
    """A pull page as JSON bytes, written directly: three times faster than ``json.dumps``.

    Every string goes through the JSON encoder's own escaping (C code), so the page is valid JSON
    whatever the storage holds: one bad row must never make a workspace's every later page
    unreadable. Integers are formatted as integers and the payload is base64, which needs none.
    """
    b64 = base64.b64encode
    items = b",".join(
        b'{"v":%d,"mutation_id":%s,"device_id":%s,"hlc":%s,"entity_id":%s,"scope":%s,'
        b'"payload":"%s","seq":%d}'
        % (
            m.version,
            _string(m.mutation_id),
            _string(m.device_id),
            _string(m.hlc),
            _string(m.entity_id),
            _string(m.scope) if m.scope is not None else b"null",
            b64(m.payload),
            m.seq or 0,
        )
        for m in mutations
    )
    return b'{"mutations":[%s],"next":%s,"has_more":%s}' % (
        items,
        _string(cursor),
        b"true" if has_more else b"false",
    )


def page_from_json(body: Any) -> PullPage:
    """A pull page from its JSON form (what ``page_body`` writes); InvalidInput when it is not
    one, or when it holds a mutation no remote would have stored (``problem``)."""
    if not isinstance(body, dict):
        raise InvalidInput("a pull page must be a JSON object")
    return checked_page(body, many_from_json)


def checked_page(
    body: dict[str, Any], mutations_of: Callable[[Any], list[WireMutation]]
) -> PullPage:
    """The pull page that a decoded ``body`` (JSON or binary) holds, ``mutations_of`` reading
    its ``mutations``; InvalidInput when it is not one, or when it holds a mutation no remote
    would have stored (``problem``)."""
    cursor, has_more = body.get("next"), body.get("has_more")
    if not isinstance(cursor, str) or not isinstance(has_more, bool):
        raise InvalidInput("a pull page needs a string 'next' and a true/false 'has_more'")
    mutations = mutations_of(body.get("mutations"))
    for mutation in mutations:
        found = problem(mutation, sealed=False)
        if found is not None:
            raise InvalidInput(f"a pull page holds a mutation no remote stores: {found[1]}")
        if mutation.seq is None:
            raise InvalidInput("a pull page holds a mutation without its seq")
    return PullPage(mutations, cursor, has_more)


def _string(text: str) -> bytes:
    """``text`` as a JSON string literal (quoted, escaped, ASCII)."""
    return encode_basestring_ascii(text).encode("ascii")


def many_from_json(items: Any) -> list[WireMutation]:
    if not isinstance(items, list):
        raise InvalidInput("mutations must be a JSON array")
    return [from_json(item) for item in items]


def to_json(mutations: Iterable[WireMutation]) -> list[dict[str, Any]]:
    return [m.to_json() for m in mutations]


def check_pull_limit(limit: int) -> None:
    """InvalidInput unless a pull's ``limit`` is one every remote accepts."""
    if not 1 <= limit <= MAX_PULL_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_PULL_LIMIT}")
