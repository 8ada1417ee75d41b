"""``/docs`` from the vendored Swagger UI: the API's pages without a CDN, so they work offline.

FastAPI's own ``/docs`` loads Swagger UI and its favicon from other hosts, so it is blank on a
machine without the network; an app made with ``docs_url=None, redoc_url=None`` calls
``add_docs`` instead.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from cairn.web import templating

# Swagger UI sets style attributes and injects a <style>, so this page allows inline styles;
# scripts still come from this origin only.
_DOCS_CSP = templating.CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


def add_docs(app: FastAPI, path: str = "/docs") -> None:
    """Serve the Swagger UI for ``app``'s OpenAPI document at ``path`` (and its assets, once)."""
    env = templating.environment()
    if not any(getattr(route, "path", None) == templating.ASSETS for route in app.routes):
        templating.mount_assets(app)

    @app.get(path, include_in_schema=False)
    def docs() -> HTMLResponse:
        context = {"title": app.title, "openapi_url": app.openapi_url or "/openapi.json"}
        headers = {"Content-Security-Policy": _DOCS_CSP}
        return templating.render(env, "openapi.html", context, headers=headers)
