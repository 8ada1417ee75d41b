"""Cross-site request checks (cairn.web.csrf): tokens, the browser's headers, and the guard as a
real server answers it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from cairn import http_edge
from cairn.web.csrf import CsrfTokens, cross_site, guard


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_valid_for_its_binding_only_and_only_while_young() -> None:
    clock = Clock()
    tokens = CsrfTokens(max_age=3600, clock=clock)
    token = tokens.issue("session-a")
    assert tokens.valid(token, "session-a")
    assert not tokens.valid(token, "session-b")
    assert not tokens.valid(token)
    assert tokens.issue("session-a") != token  # a fresh nonce each time
    clock.now += 3600
    assert tokens.valid(token, "session-a")
    clock.now += 1
    assert not tokens.valid(token, "session-a")


def test_a_token_from_the_future_or_another_process_is_refused() -> None:
    clock = Clock()
    tokens = CsrfTokens(clock=clock)
    clock.now += 60
    ahead = tokens.issue()
    clock.now -= 60
    assert not tokens.valid(ahead)
    assert not CsrfTokens(clock=clock).valid(tokens.issue())  # another secret


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("0" if t[-1] != "0" else "1"),  # the signature changed
        lambda t: "1" + t,  # the time changed
        lambda t: t.replace(".", "", 1),
        lambda t: t + "\n",
        lambda t: t.upper(),
        lambda t: "",
        lambda t: "9" * 500,
    ],
)
def test_a_changed_token_is_refused(mangle: Callable[[str], str]) -> None:
    tokens = CsrfTokens()
    assert not tokens.valid(mangle(tokens.issue()))
    assert not tokens.valid(None)


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({"host": "127.0.0.1:7777"}, False),  # not a browser, or one that sends neither
        ({"host": "127.0.0.1:7777", "sec-fetch-site": "same-origin"}, False),
        ({"host": "127.0.0.1:7777", "sec-fetch-site": "none"}, False),
        ({"host": "127.0.0.1:7777", "origin": "http://127.0.0.1:7777"}, False),
        ({"host": "127.0.0.1:7777", "sec-fetch-site": "cross-site"}, True),
        ({"host": "127.0.0.1:7777", "sec-fetch-site": "same-site"}, True),
        ({"host": "127.0.0.1:7777", "origin": "http://127.0.0.1:8000"}, True),
        ({"host": "127.0.0.1:7777", "origin": "http://evil.example"}, True),
        ({"host": "127.0.0.1:7777", "origin": "null"}, True),
        ({"origin": "http://127.0.0.1:7777"}, True),  # no Host to match
    ],
)
def test_the_browser_headers_say_whether_a_request_is_cross_site(
    headers: dict[str, str], refused: bool
) -> None:
    assert (cross_site(headers) is not None) is refused


@pytest.fixture
def guarded(serve_app: Callable[[Any], str]) -> tuple[str, CsrfTokens]:
    """A real server whose POST /change is guarded; its URL and token issuer."""
    tokens = CsrfTokens()
    app = FastAPI(exception_handlers=http_edge.handlers("the test log"))

    @app.get("/form")
    def form() -> dict[str, str]:
        return {"token": tokens.issue()}

    @app.post("/change", dependencies=[Depends(guard(tokens))])
    def change() -> dict[str, bool]:
        return {"changed": True}

    return serve_app(app), tokens


def test_the_guard_lets_a_form_of_this_page_through_and_refuses_the_rest(
    guarded: tuple[str, CsrfTokens],
) -> None:
    url, tokens = guarded
    with httpx.Client(base_url=url) as client:
        assert client.get("/form", headers={"sec-fetch-site": "cross-site"}).status_code == 200
        token = client.get("/form").json()["token"]
        assert client.post("/change", data={"csrf_token": token}).json() == {"changed": True}
        assert client.post("/change", headers={"X-CSRF-Token": token}).status_code == 200
        same = {"origin": url, "sec-fetch-site": "same-origin"}
        assert client.post("/change", data={"csrf_token": token}, headers=same).status_code == 200

        missing = client.post("/change", data={"other": "x"})
        assert missing.status_code == 403
        assert missing.json()["error"]["code"] == "cross_site_request"
        assert "reload the page" in missing.json()["error"]["message"]
        assert client.post("/change", data={"csrf_token": token + "0"}).status_code == 403
        foreign = {"origin": "http://evil.example", "sec-fetch-site": "cross-site"}
        refused = client.post("/change", data={"csrf_token": token}, headers=foreign)
        assert refused.status_code == 403
        assert "another site" in refused.json()["error"]["message"]
