"""The sync server against its own OpenAPI document: schemathesis generates requests from the
document (valid ones and ones that break it), sends them to a real uvicorn server on 127.0.0.1
with a real API key, and checks every answer: no 5xx, only documented statuses, content types
and headers, bodies that match the response schemas, valid requests taken, invalid ones refused.
A stateful run follows the document's links (create a key, use it to push, pull what it pushed).

An end-to-end and a hosted workspace, each on SQLite and PostgreSQL. The default run is seeded
and bounded; the ``slow`` one lets schemathesis generate many more cases.

Schemathesis's fixture-based loader (``from_fixture``) does not run under pytest 9 (it sets the
removed ``Node._nodeid``), so the document is built at import from the same code the server
runs (a test checks the live server serves exactly it) and each case is sent to the fixture's
server by ``base_url``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.specs.openapi.checks import positive_data_acceptance

from cairn.embedding.onnx import OnnxEmbedder
from cairn.model import Memory
from cairn.protocol import E2E, HOSTED, MAX_BATCH
from cairn.replication import MemoryState
from cairn.server import keys
from cairn.server.app import create_app
from cairn.server.context import ServerSettings, now_ms
from cairn.server.storage import ServerStorage
from cairn.server.storage.sqlite import SqliteStorage
from cairn.sync import payload

from ..conftest import envelope, serve, server_storage_for
from ..schema_hooks import filter_case

SEED = 20_260_815  # fixed, so CI replays the same cases; a failure prints what to replay
FAST, SLOW = 2, 200  # fuzzed cases per operation and mode, besides the coverage phase's
SHORT_POLL = 0.05  # seconds: a long-poll waits at most this in the fuzz run
# A valid request may still meet a state (409, 404) or a limit a schema cannot state: content
# over 64 KiB of UTF-8 (413, counted in bytes, not characters).
ACCEPTANCES = ["2xx", "3xx", 401, 403, 404, 409, 413, 429, "5xx"]
REFUSALS = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5xx"]


def _document() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        storage = SqliteStorage(Path(folder) / "server.db")
        try:
            return create_app(storage).openapi()
        finally:
            storage.close()


DOCUMENT = _document()


def _schema(examples: int, generated_auth: bool = True) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "request-timeout": 30,
            # An unknown query parameter is ignored, as HTTP APIs do (OpenAPI cannot say a route
            # takes no others), so the fuzzer does not add any.
            "generation": {
                "max-examples": examples,
                "allow-extra-parameters": False,
                # Stateful runs authenticate with real keys only (the workspace's or one a link
                # carries from POST /v1/auth/keys).
                "with-security-parameters": generated_auth,
            },
            # 413 (a body over the server's limit) is a documented refusal too.
            # One unexpected method checks the 405 and OPTIONS the Allow header; the other
            # five would only repeat them.
            "phases": {"coverage": {"unexpected-methods": ["OPTIONS", "PATCH"]}},
            "checks": {
                "negative_data_rejection": {"expected-statuses": REFUSALS},
                # Stateful runs set the key themselves, which this check takes for a generated
                # (invalid) one; the stateless run checks every route without a key (401).
                "ignored_auth": {"enabled": generated_auth},
                "positive_data_acceptance": {"expected-statuses": ACCEPTANCES},
            },
        }
    )
    # A copy: the loader annotates the dict it is given.
    schema = schemathesis.openapi.from_dict(copy.deepcopy(DOCUMENT), config=config)
    schema.hook(filter_case)  # query values that survive the wire as meant
    return schema


fast_schema, long_schema = _schema(FAST), _schema(SLOW)
linked_schema = _schema(FAST, generated_auth=False)


@dataclass
class Target:
    """The server under test, the workspace it is fuzzed in and what the fuzzer did there."""

    url: str
    mode: str
    key: str
    backend: str
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)

    def report(self) -> str:
        by_operation: dict[str, list[str]] = {}
        for (label, status), count in sorted(self.statuses.items()):
            by_operation.setdefault(label, []).append(f"{status}x{count}")
        lines = [f"{label}: {' '.join(counts)}" for label, counts in by_operation.items()]
        total = sum(self.statuses.values())
        head = f"{self.mode} workspace on {self.backend}, {total} requests"
        return head + "\n  " + "\n  ".join(lines)


def prepare(case: Case, target: Target) -> None:
    """Make a generated case reach the server's logic rather than its front door.

    - A long-poll of up to 60 s would only make the run wait: it waits ``SHORT_POLL`` at most.
    - A pushed payload must be a sealed envelope (end-to-end) or a readable memory (hosted),
      which the document can only describe in words: a payload that is valid base64 becomes
      one (holding the generated bytes), so pushes get stored and pulls serve them.
    """
    path, query, body = case.operation.path, case.query, case.body
    if path == "/v1/sync/pull" and isinstance(query, dict):
        try:  # generated as a number or as its text
            wait = float(query.get("wait", ""))
        except (TypeError, ValueError):
            wait = -1.0
        if 0 < wait <= 60:
            query["wait"] = SHORT_POLL
    if path == "/v1/sync/push" and isinstance(body, dict):
        items = body.get("mutations")
        # Over MAX_BATCH the push is refused whole, so its payloads are left as they are. Each
        # item gets a new dict: one generated dict may repeat in the list.
        if isinstance(items, list) and len(items) <= MAX_BATCH:
            body["mutations"] = [
                {**item, "payload": _payload(item, target.mode)} if isinstance(item, dict) else item
                for item in items
            ]


def _payload(item: dict[str, Any], mode: str) -> Any:
    raw = item.get("payload")
    try:
        data = base64.b64decode(raw, validate=True) if isinstance(raw, str) else None
    except (binascii.Error, ValueError):
        data = None
    if data is None:
        return raw  # not base64: the case is meant to be refused, so it stays as it was
    if mode == E2E:
        return base64.b64encode(envelope(data)).decode()
    entity, hlc = item.get("entity_id"), item.get("hlc")
    if not isinstance(entity, str) or not isinstance(hlc, str):
        return raw
    # A NUL is refused in a hosted workspace (test_hosted covers it): this payload is to be taken.
    content = data.decode("utf-8", "replace").replace("\x00", "") or "fuzz"
    memory = Memory(
        entity, content, "note", "fuzz", (), None, "fuzzer", 1, 1, False, "h", None, hlc
    )
    state = MemoryState(memory, hlc, {}, (), None)
    return base64.b64encode(payload.encode_memory(state)).decode()


def call(case: Case, target: Target) -> None:
    prepare(case, target)
    auth = {"Authorization": f"Bearer {target.key}"}
    # A keyring's blob is opaque base64 to the schema; whether it is a keyring of this workspace
    # (and signed by its master key) is a rule the server checks by reading it, which no schema
    # can state: a schema-valid blob may be refused there, so that one check is left out.
    excluded = [positive_data_acceptance] if case.operation.label == "PUT /v1/keyring" else None
    response = case.call_and_validate(base_url=target.url, headers=auth, excluded_checks=excluded)
    target.statuses[(case.operation.label, response.status_code)] += 1


@pytest.fixture(
    scope="module",
    params=[("sqlite", E2E), ("sqlite", HOSTED), ("postgres", E2E), ("postgres", HOSTED)],
    ids=lambda p: "-".join(p),
)
def target(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    embedder: OnnxEmbedder,
) -> Iterator[Target]:
    """One server per backend and workspace mode, shared by every operation's cases."""
    backend, mode = request.param
    storage: ServerStorage = server_storage_for(backend, tmp_path_factory.mktemp("fuzz"), request)
    _, key = keys.create_workspace(storage, f"fuzz-{mode}", now_ms(), mode)
    # Both rate limits off: the fuzzer sends hundreds of requests, most without a valid key, and
    # checks the contract; the limits themselves are tested in test_auth_failures.py.
    app = create_app(storage, ServerSettings(rate_limit=0, auth_failure_rate=0), embedder)
    server, thread, url = serve(app)
    made = Target(url, mode, key, backend)
    yield made
    server.should_exit = True
    thread.join(timeout=10)
    storage.close()
    print(f"\n[schema fuzz] {made.report()}")


def test_the_fuzzed_document_is_the_one_the_server_serves(target: Target) -> None:
    assert httpx.get(f"{target.url}/openapi.json").json() == DOCUMENT


@fast_schema.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_sync_server_keeps_its_documented_contract(case: Case, target: Target) -> None:
    call(case, target)


@pytest.mark.slow
@long_schema.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_sync_server_keeps_its_contract_under_long_fuzzing(case: Case, target: Target) -> None:
    call(case, target)


def run_stateful(target: Target, scenarios: int, steps: int) -> None:
    """Scenarios along the document's links: a key is created and then used for status, push
    and pull, pulls page on, a device pushes under its id, the keyring is replaced in turn."""

    class Workflow(linked_schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Case) -> None:
            prepare(case, target)
            case.headers = case.headers or {}
            case.headers.setdefault("Authorization", f"Bearer {target.key}")  # a link may set it

        def get_call_kwargs(self, case: Case) -> dict[str, Any]:
            return {"base_url": target.url}

        def after_call(self, response: Any, case: Case) -> None:
            target.statuses[(f"stateful {case.operation.label}", response.status_code)] += 1

    Workflow.run(
        settings=settings(
            Workflow.TestCase.settings,
            max_examples=scenarios,
            stateful_step_count=steps,
            derandomize=True,
            database=None,
        )
    )


def test_linked_calls_keep_the_contract(target: Target) -> None:
    run_stateful(target, scenarios=5, steps=6)
    linked = {label for label, _ in target.statuses if label.startswith("stateful")}
    assert "stateful POST /v1/auth/keys" in linked and "stateful POST /v1/sync/push" in linked


@pytest.mark.slow
def test_linked_calls_keep_the_contract_in_long_runs(target: Target) -> None:
    run_stateful(target, scenarios=200, steps=10)
