"""Fuzzing what a sync server answers: the client reads it or raises a CairnError.

A real HTTP server on 127.0.0.1 (the standard library's, since a Cairn server never sends these)
answers each request with a fuzzed status, Retry-After header and body: valid answers with fields
mutated, hostile values, deep nesting, bytes that are not JSON. Whatever it sends, ``HttpRemote``
returns a valid value or raises a CairnError (which the sync engine reports), and a Retry-After
it obeys is bounded.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cairn.errors import RateLimited
from cairn.protocol import page_body, problem
from cairn.remotes.http import MAX_RETRY_AFTER, HttpRemote

from ..conftest import envelope
from ..fuzzing import ci, fragments, mutated, mutated_json, parse_or_refuse, soak
from ..test_protocol_fuzz import GOOD

KEY = "cairn_0123456789ab_" + "s" * 43
"""A well-formed API key (the remote checks its shape before sending it)."""


@dataclass
class Answer:
    status: int
    body: bytes
    retry_after: str | None = None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client uses it
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed ACK

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        answer: Answer = self.server.answer  # type: ignore[attr-defined]
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer.body)))
        if answer.retry_after is not None:
            self.send_header("Retry-After", answer.retry_after)
        self.end_headers()
        self.wfile.write(answer.body)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def remote(server: ThreadingHTTPServer) -> Iterator[HttpRemote]:
    client = HttpRemote(f"http://127.0.0.1:{server.server_address[1]}", KEY, "dev", timeout=10)
    yield client
    client.close()


PAGE = json.loads(page_body([GOOD, GOOD.with_seq(8)], "8", True))
VALID: dict[str, Any] = {
    "pull": PAGE,
    "push": {"stored": 2, "duplicates": 0, "last_seq": 9},
    "get_keyring": {"blob": "AAEC", "version": 3, "revoked_key_ids": [1]},
    "put_keyring": {"version": 4},
    "status": {"latest_seq": 9, "mutations": 9},
}
ERROR = {
    "error": {
        "code": "invalid_mutation",
        "message": "refused",
        "rejected": [{"mutation_id": "m-1", "code": "invalid_mutation", "message": "bad id"}],
    }
}
CALLS: dict[str, Callable[[HttpRemote], object]] = {
    "pull": lambda r: r.pull("7", 10),
    "push": lambda r: r.push([GOOD]),
    "get_keyring": lambda r: r.get_keyring(),
    "put_keyring": lambda r: r.put_keyring(envelope(), 3, [1]),
    "status": lambda r: r.status(),
}


@st.composite
def answers(draw: st.DrawFn) -> tuple[str, Answer]:
    """A call, and a server's answer to it: mostly a valid answer or error mutated."""
    call = draw(st.sampled_from(sorted(CALLS)))
    status = draw(st.sampled_from([200, 200, 200, 404, 409, 413, 422, 429, 500, 503]))
    doc = VALID[call] if status == 200 else {**ERROR, "error": {**ERROR["error"]}}
    if status != 200:
        doc["error"]["code"] = draw(st.sampled_from(["invalid_mutation", "rate_limited", "x"]))
    text = draw(
        st.one_of(mutated_json(doc), fragments, st.just(json.dumps(doc))).map(str.encode)
        | mutated(json.dumps(doc).encode())
    )
    header = draw(st.none() | st.sampled_from(["nan", "inf", "-inf", "-5", "1e308", "2", "x"]))
    return call, Answer(status, text, header)


def _check(remote: HttpRemote, server: ThreadingHTTPServer, call: str, answer: Answer) -> None:
    server.answer = answer  # type: ignore[attr-defined]
    result = parse_or_refuse(CALLS[call], remote)
    if result is None:
        return
    if call == "pull":
        for mutation in result.mutations:  # type: ignore[attr-defined]
            assert problem(mutation, sealed=False) is None


def _retry(remote: HttpRemote, server: ThreadingHTTPServer, header: str) -> float:
    body = json.dumps({"error": {"code": "rate_limited", "message": "slow down"}}).encode()
    server.answer = Answer(429, body, header)  # type: ignore[attr-defined]
    with pytest.raises(RateLimited) as limited:
        remote.push([GOOD])
    return limited.value.retry_after


@ci(150)
@given(found=answers())
@example(found=("pull", Answer(200, b"[" * 50_000 + b"]" * 50_000)))  # RecursionError
@example(found=("pull", Answer(200, json.dumps({**PAGE, "has_more": "false"}).encode())))
@example(found=("pull", Answer(200, json.dumps({**PAGE, "next": {"a": 1}}).encode())))
@example(found=("push", Answer(422, json.dumps({"error": {**ERROR["error"], "rejected": 5}})
                               .encode())))  # fmt: skip
@example(found=("get_keyring", Answer(200, b'{"blob": "", "version": 1e400}')))  # OverflowError
@example(found=("get_keyring", Answer(200, b'{"blob": "", "version": 1, "revoked_key_ids": "12"}')))
@example(found=("push", Answer(200, b'{"stored": 1, "duplicates": 0, "last_seq": "nine"}')))
def test_whatever_a_server_answers_is_read_or_refused(
    server: ThreadingHTTPServer, remote: HttpRemote, found: tuple[str, Answer]
) -> None:
    _check(remote, server, *found)


@pytest.mark.parametrize("header", ["nan", "inf", "-inf", "-5", "1e308", "x", "2"])
def test_a_retry_after_is_bounded(
    server: ThreadingHTTPServer, remote: HttpRemote, header: str
) -> None:
    waited = _retry(remote, server, header)
    assert math.isfinite(waited) and 0 <= waited <= MAX_RETRY_AFTER
    assert waited == {"2": 2.0, "1e308": MAX_RETRY_AFTER, "inf": MAX_RETRY_AFTER}.get(
        header, 0.0 if header in ("-5", "-inf") else 1.0
    )


@pytest.mark.slow
@pytest.mark.timeout(1800)
@soak(10_000)
@given(found=answers())
def test_server_answers_soak(
    server: ThreadingHTTPServer, remote: HttpRemote, found: tuple[str, Answer]
) -> None:
    _check(remote, server, *found)
