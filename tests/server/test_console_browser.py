"""The admin console in a real browser (Debian's chromium), against a real server on each backend.

Every page is visited and photographed light and dark (``build/screenshots/console-*``); the
``web_page`` fixture fails a test whose pages ask for anything beyond 127.0.0.1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from cairn.protocol import WireMutation
from cairn.remotes.http import HttpRemote
from cairn.server import keys
from cairn.server.context import ServerSettings, now_ms

from ..conftest import envelope

SyncServer = Any  # the tests/conftest.py fixture's type (conftest modules are not importable)
WebPage = Any


@pytest.fixture
def console(sync_server_factory: Callable[..., SyncServer]) -> SyncServer:
    """A server that the workspace ``test`` operates."""
    return sync_server_factory(ServerSettings(rate_limit=0, operator_workspace="test"))


def sign_in(web: WebPage, server: SyncServer, key: str) -> None:
    page = web.page
    page.goto(f"{server.url}/dashboard/")
    assert page.url.endswith("/dashboard/sign-in")
    page.get_by_label("Admin API key").fill(key)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()
    assert page.url == f"{server.url}/dashboard/", page.locator("main").inner_text()


def follow(page: Any, name: str) -> None:
    """Click the link called ``name`` and wait for the page it leads to."""
    with page.expect_navigation():
        page.get_by_role("link", name=name, exact=True).click()


def wire(n: int, device: str) -> WireMutation:
    hlc = f"{1_700_000_000_000 + n:013d}-0000-{device}"
    return WireMutation(f"m-{device}-{n}", device, hlc, f"e-{n}", None, envelope())


def test_an_operator_creates_a_workspace_and_a_key_then_revokes_it(
    console: SyncServer, web_page: WebPage
) -> None:
    page = web_page.page
    page.goto(f"{console.url}/dashboard/")
    web_page.shoot("console-sign-in")
    sign_in(web_page, console, console.admin_key)
    page.get_by_label("Name").fill("team")
    page.get_by_label("Mode").select_option("hosted")
    with page.expect_navigation():
        page.get_by_role("button", name="Create").click()
    secret = page.locator("[data-secret]").inner_text().strip()
    assert secret.startswith("cairn_")
    assert keys.check(console.storage, f"Bearer {secret}").scopes == ("admin",)  # type: ignore[union-attr]
    web_page.shoot("console-workspaces")
    follow(page, "team")
    follow(page, "Keys")
    page.get_by_label("Name (who or what uses it)").fill("ci runner")
    page.get_by_label("Scope").select_option("read")
    with page.expect_navigation():
        page.get_by_role("button", name="Create key").click()
    made = page.locator("[data-secret]").inner_text().strip()
    key_id = made.split("_")[1]
    assert httpx.get(f"{console.url}/v1/devices", headers={"Authorization": f"Bearer {made}"})
    with page.expect_navigation():
        page.get_by_role("button", name=f"Revoke key {key_id} (ci runner)").click()
    row = page.locator(f"#key-{key_id}")
    assert "revoked" in row.inner_text()
    answer = httpx.get(f"{console.url}/v1/devices", headers={"Authorization": f"Bearer {made}"})
    assert answer.status_code == 401
    web_page.shoot("console-keys")
    assert web_page.errors == []


def test_a_device_appears_after_it_syncs(console: SyncServer, web_page: WebPage) -> None:
    laptop = HttpRemote(console.url, console.new_key(["write"]), device_id="dev-laptop")
    laptop.register_device("dev-laptop", "laptop")
    laptop.push([wire(n, "dev-laptop") for n in range(3)])
    # Its next pull confirms it applied the first page (its read position), and the server
    # writes that within a second (last-seen is batched).
    laptop.pull(laptop.pull(None).cursor)
    deadline = time.monotonic() + 30
    while console.storage.devices(console.workspace.id)[0].read_position != 3:
        assert time.monotonic() < deadline, "the laptop's read position was never recorded"
        time.sleep(0.05)
    sign_in(web_page, console, console.admin_key)
    page = web_page.page
    follow(page, "test")
    overview = page.locator("main").inner_text()
    assert "End-to-end encrypted" in overview and "cannot read" in overview
    assert "laptop" in overview
    follow(page, "Devices")
    assert "up to date" in page.locator("tr", has_text="laptop").inner_text()
    desk = HttpRemote(console.url, console.new_key(["write"]), device_id="dev-desk")
    desk.push([wire(n, "dev-desk") for n in range(2)])
    page.reload()
    assert page.locator("tr", has_text="laptop").locator("td").last.inner_text() == "2"
    web_page.shoot("console-devices")
    follow(page, "Activity")
    assert page.locator("svg.chart").count() == 2
    assert "2 pushes, 1 pulls and 5 changes stored" in page.locator("main").inner_text()
    web_page.shoot("console-activity")
    follow(page, "Audit")
    page.get_by_label("Action").fill("push")
    with page.expect_navigation():
        page.get_by_role("button", name="Filter").click()
    assert page.locator("tbody tr").count() == 2, page.locator("main").inner_text()
    web_page.shoot("console-audit")
    follow(page, "Health")
    assert "Schema version" in page.locator("main").inner_text()
    web_page.shoot("console-health")
    assert page.get_by_role("link", name="Memories").count() == 0  # not in an e2e workspace
    page.goto(f"{console.url}/dashboard/w/test/memories")
    assert "cannot read" in page.locator("main").inner_text()
    assert web_page.errors == []


def test_a_hosted_workspace_is_browsed_searched_and_forgotten(
    console: SyncServer, web_page: WebPage
) -> None:
    hosted, token = keys.create_workspace(console.storage, "notes", now_ms(), "hosted")
    auth = {"Authorization": f"Bearer {token}"}
    texts = [
        "The staging database is PostgreSQL 16 behind pgbouncer",
        "Deploys go out on Tuesdays after the standup",
        "The frontend is built with Vite and served by nginx",
    ]
    for text in texts:
        answer = httpx.post(f"{console.url}/v1/remember", json={"content": text}, headers=auth)
        assert answer.status_code == 201, answer.text
    sign_in(web_page, console, console.admin_key)
    page = web_page.page
    page.goto(f"{console.url}/dashboard/w/notes/memories")
    items = page.locator(".memory-list li")
    assert items.count() == 3
    assert page.get_by_role("link", name="Older →").count() == 0  # all three on one page
    page.get_by_label("Search (the same hybrid recall devices run)").fill("which database")
    with page.expect_navigation():
        page.get_by_role("button", name="Search").click()
    first = page.locator(".memory-list li").first
    assert "PostgreSQL" in first.inner_text() and "Why:" in first.inner_text()
    web_page.shoot("console-memories")
    with page.expect_navigation():
        first.get_by_role("button", name="Forget").click()
    assert page.locator(".memory-list li").count() == 2
    assert "PostgreSQL" not in page.locator(".memory-list").inner_text()
    listed = httpx.get(f"{console.url}/v1/memories", headers=auth).json()
    assert listed["total"] == 2
    assert hosted.mode == "hosted"
    assert web_page.errors == []


def test_the_console_fits_a_narrow_phone(console: SyncServer, web_page: WebPage) -> None:
    web_page.page.set_viewport_size({"width": 375, "height": 800})
    sign_in(web_page, console, console.admin_key)
    for path in ("/dashboard/", "/dashboard/w/test/", "/dashboard/w/test/keys"):
        web_page.page.goto(f"{console.url}{path}")
        width = web_page.page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"{path} is {width} px wide"
    web_page.shoot("console-overview-375")
