"""The local memory browser (``/`` of ``cairn serve``) in a real browser: every page, its forms,
a conflict between two real devices settled here, sync now, dead letters, cross-site refusal.

Each test's page fails on any request beyond 127.0.0.1 (the ``web_page`` fixture) and writes
its screenshots, light and dark, to build/screenshots/.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from cairn import config, wiring
from cairn.api import create_app
from cairn.device_store import Store
from cairn.embedding.onnx import OnnxEmbedder
from cairn.store.db import Database
from cairn.wiring import SyncControl

PASSPHRASE = "correct horse battery staple"


def test_memories_list_filter_page_and_search(
    store: Store, serve_app: Callable[[Any], str], web_page: Any
) -> None:
    store.remember("Deploys run on GitHub Actions", kind="decision", project="api", tags=["ci"])
    store.remember("The staging database is Postgres 16", kind="fact", project="api")
    for n in range(30):
        store.remember(f"Filler note number {n} about lunch", project="misc")
    url = serve_app(create_app(store))
    page = web_page.page
    page.goto(url)
    assert page.locator("h1").inner_text() == "Memories"
    assert page.locator(".pager span").inner_text() == "1–25 of 32"
    page.get_by_role("link", name="Older →").click()
    expect(page.locator(".pager span")).to_have_text("26–32 of 32")
    web_page.shoot("browser-memories")

    page.goto(url)
    page.get_by_label("Project").select_option("api")
    page.get_by_label("Kind").select_option("decision")
    page.get_by_role("button", name="Search").click()
    items = page.locator(".memory-list li")
    expect(items).to_have_count(1)
    assert "GitHub Actions" in items.first.inner_text()

    page.goto(url)
    page.get_by_label("Search by meaning and keyword").fill("where do deploys run?")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("h1")).to_have_text("Search")
    first = page.locator(".memory-list li").first
    assert "GitHub Actions" in first.inner_text()
    assert re.search(
        r"Why: semantic #\d \(cosine [\d.]+\); keyword #1", first.locator(".why").inner_text()
    )
    web_page.shoot("browser-search")
    page.set_viewport_size({"width": 375, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # no sideways scroll
    web_page.shoot("browser-search-375")
    assert web_page.errors == []


def test_a_memory_page_edits_tags_and_forgets(
    store: Store, serve_app: Callable[[Any], str], web_page: Any
) -> None:
    old = store.remember("Staging runs Postgres 15", project="api", topic_key="staging-db")
    new = store.remember("Staging runs Postgres 16", project="api", topic_key="staging-db")
    url = serve_app(create_app(store))
    page = web_page.page
    page.goto(f"{url}/memories/{new.memory.id}")
    assert page.locator("pre.content").inner_text() == "Staging runs Postgres 16"
    graph = page.locator("svg.graph")
    assert "1 related memories" in (graph.get_attribute("aria-label") or "")
    assert page.get_by_role("link", name="Staging runs Postgres 15").count() >= 1
    web_page.shoot("browser-memory")

    page.get_by_label("Text").fill("Staging runs Postgres 17 since December")
    page.get_by_label("Kind").select_option("fact")
    page.get_by_role("button", name="Save").click()
    assert "Saved." in page.locator(".notice").inner_text()
    assert store.get(new.memory.id).content == "Staging runs Postgres 17 since December"
    assert store.get(new.memory.id).kind == "fact"

    page.get_by_label("Add tags (separated by spaces or commas)").fill("db, staging")
    page.get_by_role("button", name="Add tags").click()
    expect(page.locator(".notice")).to_contain_text("Tags added")
    assert set(store.get(new.memory.id).tags) == {"db", "staging"}

    page.on("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Forget").click()
    expect(page.locator(".notice")).to_contain_text("Forgotten.")
    assert store.count() == 1 and store.get(old.memory.id)
    page.goto(f"{url}/memories/{new.memory.id}")
    assert page.locator(".problem").count() == 1  # gone: the page says so


def test_timeline_and_settings_pages(
    store: Store, serve_app: Callable[[Any], str], web_page: Any
) -> None:
    for n in range(3):
        store.remember(f"Decision {n}: use plain SQL", kind="decision", project="api")
    store.remember("A fact about the web project", kind="fact", project="web")
    url = serve_app(create_app(store))
    page = web_page.page
    page.goto(f"{url}/timeline")
    chart = page.locator("svg.chart")
    assert "4 in all over 30 periods; decision, fact" in (chart.get_attribute("aria-label") or "")
    assert page.locator("svg.chart rect").count() == 2  # today's bar in two parts
    web_page.shoot("browser-timeline")
    page.get_by_label("By", exact=True).select_option("project")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("table")).to_contain_text("api")
    page.goto(f"{url}/settings")
    assert str(store.db.path) in page.locator("dl.facts").first.inner_text()
    web_page.shoot("browser-settings")
    assert web_page.errors == []


def test_a_cross_site_post_is_refused_and_changes_nothing(
    store: Store, serve_app: Callable[[Any], str], web_page: Any
) -> None:
    memory = store.remember("Keep me", project="api").memory
    url = serve_app(create_app(store))
    # A page on another origin (another port of 127.0.0.1 is another origin) posts a form at
    # the browser's forget button, as a malicious site would.
    evil = serve_app(_evil_page(f"{url}/memories/{memory.id}/forget"))
    web_page.page.goto(evil)
    with web_page.page.expect_response(lambda r: r.url.endswith("/forget")) as answer:
        web_page.page.locator("button").click()
    assert answer.value.status == 403
    assert store.get(memory.id).content == "Keep me"
    # Without a browser's headers, a post without the form's token is refused too.
    assert httpx.post(f"{url}/memories/{memory.id}/forget").status_code == 403
    assert store.count() == 1


def _evil_page(target: str) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse

    app = FastAPI()

    @app.get("/")
    def page() -> HTMLResponse:
        return HTMLResponse(f'<form method="post" action="{target}"><button>Win</button></form>')

    return app


def test_with_a_token_the_browser_signs_in_first(
    store: Store, serve_app: Callable[[Any], str], web_page: Any
) -> None:
    store.remember("Behind the token", project="api")
    url = serve_app(create_app(store, token="s3cret-token-123"))
    page = web_page.page
    page.goto(url)
    assert page.url.endswith("/signin")
    page.get_by_label("Token").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    assert "not the token" in page.locator(".problem").inner_text()
    page.get_by_label("Token").fill("s3cret-token-123")
    page.get_by_role("button", name="Sign in").click()
    assert "Behind the token" in page.locator(".memory-list").inner_text()
    [cookie] = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert "s3cret" not in cookie["value"]
    assert httpx.get(url).status_code == 401  # a program without the token: no redirect
    signed_in = httpx.get(url, cookies={cookie["name"]: cookie["value"]})
    assert signed_in.status_code == 200 and "Behind the token" in signed_in.text


@dataclass
class Device:
    settings: Any
    store: Store
    control: SyncControl


@pytest.fixture
def devices(
    tmp_path: Path, embedder: OnnxEmbedder, sync_server: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], Device]]:
    """Devices (own home and store) set up to sync through one real sync server."""
    monkeypatch.setenv("CAIRN_KEY_STORE", "file")
    made: list[Device] = []

    def make(name: str) -> Device:
        home = tmp_path / name
        settings = config.load(
            {**os.environ, "CAIRN_HOME": str(home), "CAIRN_KEY_STORE": "file"}, source="http"
        )
        store = Store(Database(home / "cairn.db"), embedder, project="api", source=name)
        wiring.setup_sync(
            settings,
            store,
            sync_server.url,
            passphrase=PASSPHRASE,
            api_key=sync_server.new_key(),
            device_name=name,
        )
        device = Device(settings, store, SyncControl(settings, store, autosync=False))
        made.append(device)
        return device

    yield make
    for device in made:
        device.control.close()
        device.store.close()


def test_a_conflict_settled_in_the_browser_is_settled_on_the_other_device(
    devices: Callable[[str], Device], serve_app: Callable[[Any], str], web_page: Any
) -> None:
    laptop, desktop = devices("laptop"), devices("desktop")
    memory = laptop.store.remember("The API allows 100 requests per minute").memory
    laptop.control.now()
    desktop.control.now()
    laptop.store.edit(memory.id, content="The API allows 200 requests per minute")
    desktop.store.edit(memory.id, content="The API allows 500 requests per minute")
    for device in (laptop, desktop, laptop):
        device.control.now()
    assert len(laptop.control.conflicts()) == 1

    url = serve_app(create_app(laptop.store, sync=laptop.control))
    page = web_page.page
    page.goto(f"{url}/conflicts")
    section = page.locator("section.conflict")
    assert section.locator("pre.current").inner_text() == "The API allows 500 requests per minute"
    assert section.locator("pre.other").inner_text() == "The API allows 200 requests per minute"
    headings = section.locator("h3").all_inner_texts()
    assert "written by desktop" in headings[0] and "written by laptop (this device)" in headings[1]
    assert section.locator(".diff del").inner_text() == "500"
    assert section.locator(".diff ins").inner_text() == "200"
    web_page.shoot("browser-conflicts")
    section.get_by_role("button", name="Keep the other version").click()
    assert "Resolved." in page.locator(".notice").inner_text()
    assert laptop.control.conflicts() == []

    page.goto(f"{url}/sync")
    page.get_by_role("button", name="Sync now").click()  # the choice leaves this device
    assert "Synced." in page.locator(".notice").inner_text()
    assert page.locator("#pending").inner_text() == "0"
    assert "desktop" in page.locator("main").inner_text()
    web_page.shoot("browser-sync")
    desktop.control.now()
    assert desktop.control.conflicts() == []
    assert desktop.store.get(memory.id).content == "The API allows 200 requests per minute"
    assert web_page.errors == []


def test_a_dead_letter_is_retried_from_the_sync_page(
    devices: Callable[[str], Device], serve_app: Callable[[Any], str], web_page: Any
) -> None:
    laptop = devices("laptop")
    memory = laptop.store.remember("Refused once, sent on retry").memory
    with laptop.store.db.write() as conn:  # as a refused push leaves it (cairn.store.outbox)
        conn.execute("DELETE FROM outbox")
        conn.execute(
            "INSERT INTO dead_letters VALUES (?, 'push', 'memory', ?, 'invalid_mutation', "
            "'the remote refused it', 1764783600000)",
            ("0" * 32, memory.id),
        )
    url = serve_app(create_app(laptop.store, sync=laptop.control))
    page = web_page.page
    page.goto(f"{url}/sync")
    assert "invalid_mutation" in page.locator("table").inner_text()
    page.get_by_role("button", name="Retry them").click()
    assert "queued to be sent again" in page.locator(".notice").inner_text()
    assert laptop.control.dead_letters() == []
    assert page.locator("#pending").inner_text() == "1"
    page.get_by_role("button", name="Sync now").click()
    expect(page.locator(".notice")).to_contain_text("Synced.")
    assert page.locator("#pending").inner_text() == "0"
