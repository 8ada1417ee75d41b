"""The local browser's sync pages: conflicts side by side, sync state and sync now, settings.

Each page and form calls ``cairn.wiring.SyncControl``, which `cairn sync` and the JSON routes
use too: resolving a conflict here is ``Syncer.resolve``, and the choice syncs like any change.
"""

from __future__ import annotations

import difflib
import html
import re
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from cairn import config
from cairn.api.browser import Pages, done
from cairn.device_store import Store
from cairn.errors import CairnError, SyncNotConfigured
from cairn.settings import Settings
from cairn.wiring import NOT_CONFIGURED, SyncControl

KEEP = {"current": "local", "other": "remote", "both": "both"}
"""The choices a conflict's buttons offer, to the sync engine's names (as `cairn sync resolve`)."""
_WORDS = re.compile(r"\s+|[^\s]+")


def add_sync_pages(
    app: FastAPI, store: Store, sync: SyncControl | None, settings: Settings | None, pages: Pages
) -> None:
    """Add /conflicts, /sync and /settings (sync pages say so when this runs without sync)."""

    def control() -> SyncControl:
        if sync is None:
            raise SyncNotConfigured("this `cairn serve` runs without sync")
        return sync

    def names() -> tuple[dict[str, str], str | None]:
        """Device names by id, and why there are none (the remote did not answer)."""
        try:
            return control().device_names(), None
        except CairnError as exc:
            return {}, exc.message

    @app.get("/conflicts", include_in_schema=False)
    def conflicts(request: Request) -> HTMLResponse:
        found = control().conflicts() if sync is not None else []
        devices, unnamed = names() if found else ({}, None)
        shown = [
            {
                "conflict": c,
                "current_by": devices.get(c.current_device_id, c.current_device_id[:12]),
                "other_by": devices.get(c.device_id, c.device_id[:12]),
                "diff": word_diff(c.current, c.content),
            }
            for c in found
        ]
        return pages.render(
            request,
            "conflicts.html",
            "Conflicts",
            "/conflicts",
            conflicts=shown,
            this_device=store.device_id(),
            unnamed=unnamed,
            configured=sync is not None,
        )

    @app.post(
        "/conflicts/{conflict_id}/resolve",
        include_in_schema=False,
        dependencies=[pages.guard()],
    )
    def resolve(
        request: Request,
        conflict_id: str,
        keep: Annotated[str, Form(pattern="^(current|other|both)$")],
    ) -> Any:
        try:
            control().resolve(conflict_id, KEEP[keep])
        except CairnError as exc:
            return pages.problem(request, exc, "/conflicts")
        return done("/conflicts", "resolved")

    @app.get("/sync", include_in_schema=False)
    def sync_page(request: Request) -> HTMLResponse:
        status = control().status() if sync is not None else None
        configured = bool(status and status["configured"])
        devices, unnamed = names() if configured else ({}, None)
        letters = control().dead_letters() if sync is not None else []
        return pages.render(
            request,
            "sync.html",
            "Sync",
            "/sync",
            state=status,
            configured=configured,
            not_configured=NOT_CONFIGURED,
            devices=sorted(devices.items(), key=lambda d: d[1]),
            unnamed=unnamed,
            dead_letters=letters,
            this_device=store.device_id(),
        )

    @app.post("/sync/now", include_in_schema=False, dependencies=[pages.guard()])
    def sync_now(request: Request) -> Any:
        try:
            control().now()
        except CairnError as exc:
            return pages.problem(request, exc, "/sync")
        return done("/sync", "synced")

    @app.post("/sync/dead-letters/retry", include_in_schema=False, dependencies=[pages.guard()])
    def retry(request: Request) -> Any:
        try:
            control().retry_dead_letters()
        except CairnError as exc:
            return pages.problem(request, exc, "/sync")
        return done("/sync", "requeued")

    @app.get("/settings", include_in_schema=False)
    def settings_page(request: Request) -> HTMLResponse:
        current = config.reload(settings) if settings is not None else None
        return pages.render(
            request,
            "settings.html",
            "Settings",
            "/settings",
            facts=where_things_are(store, current),
            sync=current.sync if current is not None else None,
            rules=rule_lines(asdict(current.sync.rules)) if current is not None else [],
        )


def where_things_are(store: Store, settings: Settings | None) -> list[tuple[str, str]]:
    """The settings page's facts: files and folders, the model and its options (no secret)."""
    facts = [("Store", str(store.db.path)), ("Model", store.embedder.model_id)]
    if settings is None:
        return facts
    home = settings.home
    return [
        ("Home (CAIRN_HOME)", str(home)),
        ("Store", str(store.db.path)),
        ("Configuration", str(home / "config.toml")),
        ("Sync settings and keys", str(home / "keys")),
        ("Model", store.embedder.model_id),
        ("Model folder", str(settings.model_dir or Path("(the bundled model)"))),
        ("Tokens embedded per memory", str(settings.max_tokens)),
        ("Near-duplicate threshold", f"{settings.near_duplicate:.2f}"),
    ]


def rule_lines(rules: dict[str, Any]) -> list[tuple[str, str]]:
    """Selective-sync rules as lines to read: ``("include projects", "api, web")``."""
    return [
        (name.replace("_", " "), ", ".join(v) if isinstance(v, tuple | list) else str(v).lower())
        for name, v in rules.items()
    ]


def word_diff(before: str, after: str) -> Markup:
    """``after`` against ``before`` word by word: removed words in <del>, added in <ins>."""
    old, new = _WORDS.findall(before), _WORDS.findall(after)
    out = []
    for op, a0, a1, b0, b1 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if op in ("delete", "replace"):
            out.append(f"<del>{html.escape(''.join(old[a0:a1]))}</del>")
        if op in ("insert", "replace"):
            out.append(f"<ins>{html.escape(''.join(new[b0:b1]))}</ins>")
        if op == "equal":
            out.append(html.escape("".join(old[a0:a1])))
    return Markup("".join(out))
