"""The web UIs' files: vendored ones unchanged and accounted for, the base page's structure."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Any

import pytest

from cairn.web import templating

STATIC = Path(templating.__file__).parent / "static"
VENDOR = STATIC / "vendor"


def manifest() -> dict[str, Any]:
    return tomllib.loads((VENDOR / "VENDOR.toml").read_text())


def test_every_vendored_file_is_listed_with_its_version_licence_and_digest() -> None:
    listed = {"VENDOR.toml"}
    for name, entry in manifest().items():
        assert entry["version"] and entry["license"] and entry["package"], name
        for key in ("license_file", "notice_file"):
            if key in entry:
                assert (VENDOR / entry[key]).read_text().strip(), f"{name}: {key} is empty"
                listed.add(entry[key])
        for path, digest in entry["files"].items():
            data = (VENDOR / path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == digest, f"{path} differs from {name}"
            listed.add(path)
    present = {p.relative_to(VENDOR).as_posix() for p in VENDOR.rglob("*") if p.is_file()}
    assert present == listed


def test_the_htmx_file_is_the_version_listed() -> None:
    text = (VENDOR / "htmx" / "htmx.min.js").read_text()
    assert f'version:"{manifest()["htmx"]["version"]}"' in text


@pytest.mark.parametrize("path", ["cairn.css", "cairn.js", "openapi.js"])
def test_our_own_assets_name_no_other_host(path: str) -> None:
    text = (STATIC / path).read_text()
    assert "http://" not in text and "https://" not in text and "//" + "cdn" not in text


def test_the_base_page_has_landmarks_a_skip_link_and_a_theme_button() -> None:
    env = templating.environment()
    page = env.from_string('{% extends "base.html" %}{% block content %}<h1>Hi</h1>{% endblock %}')
    html = page.render(
        app_name="Cairn", title="Test", nav=[("/", "Memories"), ("/sync", "Sync")], active="/sync"
    )
    assert '<a class="skip-link" href="#main">' in html
    assert '<main id="main"' in html and '<nav aria-label="Main">' in html
    assert '<a href="/sync" aria-current="page">Sync</a>' in html
    assert '<a href="/">Memories</a>' in html
    assert "data-theme-toggle" in html and 'name="viewport"' in html
    assert templating.asset("cairn.css") in html
    assert "<title>Test · Cairn</title>" in html


def test_the_base_page_escapes_what_it_is_given() -> None:
    env = templating.environment()
    html = env.get_template("base.html").render(
        app_name="<i>", title="<script>x</script>", nav=[], active="", notice="<b>done</b>"
    )
    assert "<script>x" not in html and "&lt;script&gt;x" in html
    assert "&lt;b&gt;done&lt;/b&gt;" in html


def test_times_are_written_in_utc() -> None:
    assert templating.human_time(1_764_783_600_000) == "2025-12-03 17:40 UTC"
    assert templating.iso_time(1_764_783_600_000) == "2025-12-03T17:40:00+00:00"
