"""Jinja2 pages for both web UIs: the environment, the shared base page and the ``/assets`` mount.

A UI makes one environment with ``environment("cairn.its.package")``: its own ``templates/``
folder first, then this package's (``base.html``, ``macros.html``). Pages extend ``base.html``
and are answered by ``render``, which adds the headers every page carries: a Content-Security-
Policy that lets the page load nothing from another origin (no CDN can creep back in), no
framing, no referrer to other sites, no sniffing.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import jinja2
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from cairn.version import __version__

ASSETS = "/assets"
"""Where both apps serve this package's ``static/`` folder."""

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
"""Every page's policy: scripts, styles and images from this origin only, no inline script."""

SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it, Chromium sends `Origin: null` on a form post, which the CSRF
    # check must refuse (it cannot tell it from a sandboxed page of another site).
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def environment(*packages: str) -> jinja2.Environment:
    """An environment over the ``templates/`` folders of ``packages`` then of ``cairn.web``;
    autoescaping on, and an undefined name is an error, not an empty string."""
    loaders = [jinja2.PackageLoader(p, "templates") for p in (*packages, "cairn.web")]
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["asset"] = asset
    env.globals["version"] = __version__
    env.filters["iso"] = iso_time
    env.filters["human_time"] = human_time
    return env


def iso_time(ms: int) -> str:
    """Milliseconds since the epoch as an ISO 8601 UTC time (a ``<time datetime>``)."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def human_time(ms: int) -> str:
    """Milliseconds since the epoch as people read a UTC time: ``2026-12-03 17:40 UTC``."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def render(
    env: jinja2.Environment,
    name: str,
    context: Mapping[str, Any],
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """Template ``name`` rendered with ``context``, with the security headers."""
    html = env.get_template(name).render(context)
    return HTMLResponse(html, status, {**SECURITY_HEADERS, **(headers or {})})


def mount_assets(app: FastAPI) -> None:
    """Serve this package's ``static/`` folder (stylesheet, scripts, vendored files) at
    ``/assets``."""
    app.mount(ASSETS, StaticFiles(packages=[("cairn.web", "static")]), name="assets")


def asset(path: str) -> str:
    """The URL of static file ``path``, with a digest of its bytes so a browser never keeps a
    stale copy across upgrades."""
    return f"{ASSETS}/{path}?v={_digest(path)}"


@functools.cache
def _digest(path: str) -> str:
    data = resources.files("cairn.web").joinpath("static", *path.split("/")).read_bytes()
    return hashlib.sha256(data).hexdigest()[:12]
