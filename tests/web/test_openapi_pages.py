"""``/docs`` of both servers in a real browser: Swagger UI renders from the package, offline.

The ``web_page`` fixture aborts any request beyond 127.0.0.1 and fails the test on one, so a page
that still reached for a CDN fails here (FastAPI's own /docs did: blank without the network).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from cairn.api import create_app as local_api
from cairn.device_store import Store
from cairn.server.app import create_app as sync_server
from cairn.server.storage.sqlite import SqliteStorage


def rendered(web_page: Any, url: str) -> Any:
    """The /docs page at ``url`` once Swagger UI has drawn the operations."""
    page = web_page.page
    page.goto(f"{url}/docs")
    page.locator(".opblock").first.wait_for()
    return page


def test_the_local_api_docs_render_with_nothing_from_outside(
    store: Store, serve_app: Callable[[Any], str], web_page: Any
) -> None:
    url = serve_app(local_api(store))
    page = rendered(web_page, url)
    assert page.locator(".info .title").inner_text().startswith("Cairn")
    assert page.locator(".opblock-summary-path", has_text="/v1/recall").count() == 1
    assert any(r.endswith("/openapi.json") for r in web_page.requests)
    assert web_page.errors == []
    web_page.shoot("local-api-docs")


def test_the_sync_server_docs_render_with_nothing_from_outside(
    tmp_path: Path, serve_app: Callable[[Any], str], web_page: Any
) -> None:
    storage = SqliteStorage(tmp_path / "server.db")
    try:
        url = serve_app(sync_server(storage))
        page = rendered(web_page, url)
        assert page.locator(".info .title").inner_text().startswith("Cairn sync server")
        assert page.locator(".opblock-summary-path", has_text="/v1/sync/push").count() == 1
        assert web_page.errors == []
        web_page.shoot("server-api-docs")
    finally:
        storage.close()


def test_the_docs_page_forbids_other_origins(store: Store, serve_app: Callable[[Any], str]) -> None:
    answer = httpx.get(f"{serve_app(local_api(store))}/docs")
    assert answer.status_code == 200
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'self'" in policy
    assert "cdn" not in answer.text and "https://" not in answer.text
    assert httpx.get(f"{serve_app(local_api(store))}/redoc").status_code == 404


def test_a_request_beyond_this_machine_is_caught(
    serve_app: Callable[[Any], str], web_page: Any
) -> None:
    """The check every browser test relies on: a page reaching for another host is seen (and
    the request never leaves: it is aborted)."""
    app = FastAPI()

    @app.get("/")
    def page() -> HTMLResponse:
        return HTMLResponse(
            '<link rel="stylesheet" href="https://cdn.example.invalid/x.css">'
            '<img src="http://192.0.2.1/y.png"><p>hello</p>'
        )

    web_page.page.goto(serve_app(app))
    web_page.page.wait_for_load_state("load")
    assert sorted(web_page.outside) == [
        "http://192.0.2.1/y.png",
        "https://cdn.example.invalid/x.css",
    ]
    web_page.outside.clear()  # seen: this test passes rather than failing at teardown
