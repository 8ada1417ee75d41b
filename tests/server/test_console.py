"""The admin console's sign-in, sessions and CSRF checks over real HTTP, on each backend.

The pages themselves are driven in a real browser (``test_console_browser``); these tests
check what a browser hides: cookies' flags, answers to forged or replayed requests, the audit.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from cairn.server import keys
from cairn.server.context import ServerSettings, now_ms

SyncServer = Any  # the tests/conftest.py fixture's type (conftest modules are not importable)

_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def console(sync_server_factory: Callable[..., SyncServer]) -> SyncServer:
    """A server whose workspace ``test`` operates it, with a low limit on failed sign-ins."""
    settings = ServerSettings(
        rate_limit=0, auth_failure_rate=0.01, auth_failure_burst=3, operator_workspace="test"
    )
    return sync_server_factory(settings)


def token_of(response: httpx.Response) -> str:
    found = _TOKEN.search(response.text)
    assert found, response.text
    return found[1]


def sign_in(client: httpx.Client, key: str) -> httpx.Response:
    form = client.get("/dashboard/sign-in")
    return client.post("/dashboard/sign-in", data={"key": key, "csrf_token": token_of(form)})


def test_without_a_session_every_page_sends_to_the_sign_in_page(console: SyncServer) -> None:
    with httpx.Client(base_url=console.url) as client:
        for path in ("/dashboard/", "/dashboard/health", "/dashboard/w/test/keys"):
            answer = client.get(path)
            assert (answer.status_code, answer.headers["location"]) == (303, "/dashboard/sign-in")
        page = client.get("/dashboard/sign-in")
        assert page.status_code == 200
        assert "Admin API key" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]


def test_an_admin_key_signs_in_with_a_strict_http_only_cookie(console: SyncServer) -> None:
    with httpx.Client(base_url=console.url) as client:
        answer = sign_in(client, console.admin_key)
        assert (answer.status_code, answer.headers["location"]) == (303, "/dashboard/")
        cookie = next(
            c for c in answer.headers.get_list("set-cookie") if c.startswith("cairn_console=")
        )
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/dashboard"} <= flags
        assert "secure" not in flags  # plain HTTP here; HTTPS (or a trusted proxy's) adds it
        assert any(f.startswith("max-age=") for f in flags)
        page = client.get("/dashboard/")
        assert page.status_code == 200
        assert "test" in page.text and "Sign out" in page.text
        assert console.admin_key not in page.text  # the secret never comes back


def test_the_cookie_is_secure_behind_https(console: SyncServer) -> None:
    """Behind a TLS proxy, X-Forwarded-Proto says https and both cookies are Secure (believed
    from any proxy: the flag only restricts where the browser sends the cookie)."""
    headers = {"X-Forwarded-Proto": "https"}
    with httpx.Client(base_url=console.url, headers=headers) as client:
        form = client.get("/dashboard/sign-in")
        (form_cookie,) = form.headers.get_list("set-cookie")
        assert "secure" in {part.strip().lower() for part in form_cookie.split(";")}
        # httpx sends no Secure cookie over plain HTTP: send it as the browser behind TLS would
        answer = client.post(
            "/dashboard/sign-in",
            data={"key": console.admin_key, "csrf_token": token_of(form)},
            headers={"Cookie": form_cookie.split(";")[0]},
        )
        cookie = next(
            c for c in answer.headers.get_list("set-cookie") if c.startswith("cairn_console=")
        )
        assert "secure" in {part.strip().lower() for part in cookie.split(";")}


def test_a_key_without_the_admin_scope_cannot_sign_in(console: SyncServer) -> None:
    writer = console.new_key(["write"])
    with httpx.Client(base_url=console.url) as client:
        answer = sign_in(client, writer)
        assert answer.status_code == 403
        assert "admin scope" in answer.text
        assert "cairn_console" not in client.cookies
        assert client.get("/dashboard/").status_code == 303
    (entry,) = console.storage.audit_log(console.workspace.id, 10, None, "console_refused")
    assert entry.key_id == writer.split("_")[1]


def test_a_form_without_its_csrf_token_is_refused(console: SyncServer) -> None:
    with httpx.Client(base_url=console.url) as client:
        sign_in(client, console.admin_key)
        keys_before = console.storage.keys(console.workspace.id)
        url = "/dashboard/w/test/keys"
        for data in (
            {"key_name": "x", "scope": "read"},
            {"key_name": "x", "scope": "read", "csrf_token": "1.abc.def"},
        ):
            assert client.post(url, data=data).status_code == 403
        token = token_of(client.get(url))
        cross = client.post(
            url,
            data={"key_name": "x", "scope": "read", "csrf_token": token},
            headers={"Origin": "http://evil.example"},
        )
        assert cross.status_code == 403
        assert console.storage.keys(console.workspace.id) == keys_before
        made = client.post(url, data={"key_name": "x", "scope": "read", "csrf_token": token})
        assert made.status_code == 201
        assert len(console.storage.keys(console.workspace.id)) == len(keys_before) + 1


def test_a_csrf_token_of_one_session_fails_in_another(console: SyncServer) -> None:
    with httpx.Client(base_url=console.url) as one, httpx.Client(base_url=console.url) as two:
        sign_in(one, console.admin_key)
        sign_in(two, console.admin_key)
        token = token_of(one.get("/dashboard/w/test/keys"))
        data = {"key_name": "x", "scope": "read", "csrf_token": token}
        assert two.post("/dashboard/w/test/keys", data=data).status_code == 403


def test_failed_sign_ins_are_limited_and_audited(console: SyncServer) -> None:
    key_id = console.admin_key.split("_")[1]
    wrong = f"cairn_{key_id}_{'x' * 43}"
    with httpx.Client(base_url=console.url) as client:
        statuses = [sign_in(client, wrong).status_code for _ in range(5)]
        assert statuses[:3] == [401, 401, 401]
        assert statuses[3:] == [429, 429]  # the burst of 3 is spent
        assert "cairn_console" not in client.cookies
    entries = console.storage.audit_log(console.workspace.id, 10, None, "auth_failed")
    assert entries and entries[0].key_id == key_id
    assert entries[0].detail["reasons"] == {"wrong_secret": 1}


def test_signing_out_and_revoking_the_key_end_the_session(console: SyncServer) -> None:
    second = console.new_key(["admin"])
    with httpx.Client(base_url=console.url) as client:
        sign_in(client, second)
        token = token_of(client.get("/dashboard/"))
        out = client.post("/dashboard/sign-out", data={"csrf_token": token})
        assert (out.status_code, out.headers["location"]) == (303, "/dashboard/sign-in")
        assert client.get("/dashboard/").status_code == 303
        sign_in(client, second)
        assert client.get("/dashboard/").status_code == 200
        console.storage.revoke_key(console.workspace.id, second.split("_")[1], 1)
        assert client.get("/dashboard/").status_code == 303
    actions = [e.action for e in console.storage.audit_log(console.workspace.id, 10, None)]
    assert actions.count("console_sign_in") == 2 and "console_sign_out" in actions


def test_a_tenant_admin_sees_only_its_own_workspace(console: SyncServer) -> None:
    other, other_key = console.new_workspace("other")
    with httpx.Client(base_url=console.url) as client:
        sign_in(client, other_key)
        listing = client.get("/dashboard/")
        assert "/dashboard/w/other/" in listing.text and "/dashboard/w/test/" not in listing.text
        assert client.get("/dashboard/w/test/keys").status_code == 404
        assert client.get("/dashboard/w/nonesuch/keys").status_code == 404
        token = token_of(listing)
        made = client.post("/dashboard/workspaces", data={"name": "x", "csrf_token": token})
        assert made.status_code == 403
        quota = client.post(
            "/dashboard/w/other/quota", data={"max_mutations": "1", "csrf_token": token}
        )
        assert quota.status_code == 403
    assert [w.name for w in console.storage.workspaces()] == ["test", "other"]


def test_a_hosted_workspaces_memories_page_by_creation_time(console: SyncServer) -> None:
    _, token = console.new_workspace("notes")  # e2e; a hosted one is made below
    hosted, token = keys.create_workspace(console.storage, "hosted", now_ms(), "hosted")
    auth = {"Authorization": f"Bearer {token}"}
    for n in range(30):
        body = {"content": f"memory number {n}", "project": "p" if n % 2 else "q"}
        assert httpx.post(f"{console.url}/v1/remember", json=body, headers=auth).status_code == 201
    with httpx.Client(base_url=console.url) as client:
        sign_in(client, console.admin_key)
        first = client.get("/dashboard/w/hosted/memories")
        shown = re.findall(r"memory number (\d+)", first.text)
        assert shown == [str(n) for n in range(29, 4, -1)]  # newest first, 25 a page
        older = re.search(r'href="\?([^"]+)" rel="next"', first.text)
        assert older
        second = client.get(f"/dashboard/w/hosted/memories?{html.unescape(older[1])}")
        assert re.findall(r"memory number (\d+)", second.text) == ["4", "3", "2", "1", "0"]
        assert 'rel="next"' not in second.text and 'rel="first"' in second.text
        odd = client.get("/dashboard/w/hosted/memories?project=p")
        assert re.findall(r"memory number (\d+)", odd.text) == [str(n) for n in range(29, 0, -2)]
        assert client.get("/dashboard/w/hosted/memories?before=1.x;drop").status_code == 422
        e2e = client.get("/dashboard/w/notes/memories")
        assert "cannot read" in e2e.text and "memory number" not in e2e.text
    assert hosted.mode == "hosted"
