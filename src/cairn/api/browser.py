"""The local memory browser at ``/`` of ``cairn serve``: memories, search, one memory, timeline.

Pages are rendered on the server (``cairn.web``); every form that changes something posts with
a token and passes ``cairn.web.csrf`` (Origin and Sec-Fetch-Site too), then redirects back with
a notice. The pages call the same store verbs as the JSON routes: nothing is computed twice.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

import jinja2
from fastapi import Depends, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from cairn import model
from cairn.device_store import Store
from cairn.errors import CairnError
from cairn.model import Filters
from cairn.store import search_queries
from cairn.web import charts, csrf, templating
from cairn.web.graph import Neighbour, relation_graph

NAV = [
    ("/", "Memories"),
    ("/timeline", "Timeline"),
    ("/conflicts", "Conflicts"),
    ("/sync", "Sync"),
    ("/settings", "Settings"),
]
PAGE = 25
HITS = 20
NOTICES = {
    "edited": "Saved. The change syncs to your other devices.",
    "tagged": "Tags added. The change syncs to your other devices.",
    "forgotten": "Forgotten. The deletion syncs to your other devices.",
    "resolved": "Resolved. The choice syncs to your other devices.",
    "synced": "Synced.",
    "requeued": "The refused changes are queued to be sent again.",
}
"""What a redirect's ``?done=`` says (a fixed set: the page never echoes request text)."""
_SERIES = 7
"""Timeline series drawn one by one; the rest are added up as "other"."""


@dataclass(frozen=True)
class Pages:
    """What every page of the browser shares: templates, form tokens, the nav."""

    env: jinja2.Environment
    tokens: csrf.CsrfTokens

    def render(
        self, request: Request, name: str, title: str, active: str, status: int = 200, **more: Any
    ) -> HTMLResponse:
        context = {
            "app_name": "Cairn",
            "title": title,
            "nav": NAV,
            "active": active,
            "csrf": self.tokens.issue(),
            "notice": NOTICES.get(request.query_params.get("done", "")),
            **more,
        }
        return templating.render(self.env, name, context, status)

    def problem(self, request: Request, exc: CairnError, active: str) -> HTMLResponse:
        """The page for an error a page or form met: what went wrong, what to do next."""
        return self.render(
            request, "problem.html", "Problem", active, exc.http_status, problem=exc.message
        )

    def guard(self) -> Any:
        """The dependency every form's route carries."""
        return Depends(csrf.guard(self.tokens))


def done(path: str, what: str) -> RedirectResponse:
    """After a form: back to ``path`` (a page of this app) with the notice ``what``."""
    sep = "&" if "?" in path else "?"
    return RedirectResponse(f"{path}{sep}done={what}", status_code=303)


SESSION_COOKIE = "cairn_session"


def session_value(token: str) -> str:
    """The sign-in cookie's value for ``token``: derived from it, so the cookie never holds the
    token itself, and changing the token signs every browser out."""
    return hmac.new(token.encode(), b"cairn local browser session", hashlib.sha256).hexdigest()


def add_signin(app: FastAPI, pages: Pages, token: str) -> None:
    """Add /signin: the token, typed once, becomes an HttpOnly, SameSite=Strict cookie."""

    @app.get("/signin", include_in_schema=False)
    def signin_form(request: Request) -> HTMLResponse:
        return pages.render(request, "signin.html", "Sign in", "")

    @app.post("/signin", include_in_schema=False, dependencies=[pages.guard()])
    def signin(request: Request, given: Annotated[str, Form(alias="token", max_length=512)]) -> Any:
        if not hmac.compare_digest(given.encode(), token.encode()):
            return pages.render(
                request, "signin.html", "Sign in", "", 401, problem="That is not the token."
            )
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session_value(token),
            max_age=7 * 86400,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response


def add_browser(app: FastAPI, store: Store, pages: Pages) -> None:
    """Add the memory pages (list and search, one memory and its forms, the timeline)."""

    @app.get("/", include_in_schema=False)
    def memories(
        request: Request,
        q: str = "",
        project: str = "",
        kind: str = "",
        tag: str = "",
        since: str = "",
        until: str = "",
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> HTMLResponse:
        form = {"q": q, "project": project, "kind": kind, "tag": tag}
        form |= {"since": since, "until": until}
        found: dict[str, Any] = {"hits": None, "memories": [], "total": 0}
        problem = None
        try:
            filters = Filters.parse(
                project or None, [kind] if kind else [], [tag] if tag else [], since, until
            )
            if q.strip():
                found["hits"] = store.recall(q, filters, HITS)
            else:
                found["memories"] = store.list(filters, PAGE, offset)
                found["total"] = store.count(filters)
        except CairnError as exc:
            problem = exc.message
        query = urlencode({k: v for k, v in form.items() if v and k != "q"})
        return pages.render(
            request,
            "memories.html",
            "Search" if q.strip() else "Memories",
            "/",
            422 if problem else 200,
            form=form,
            query=f"{query}&" if query else "",
            offset=offset,
            limit=PAGE,
            projects=store.projects(),
            kinds=model.KINDS,
            problem=problem,
            **found,
        )

    @app.get("/memories/{memory_id}", include_in_schema=False)
    def memory(request: Request, memory_id: str) -> HTMLResponse:
        try:
            found = store.get(memory_id)
            relations = store.relations(found.id)
        except CairnError as exc:
            return pages.problem(request, exc, "/")
        neighbours = []
        for relation in relations:
            phrase, other = relation.seen_from(found.id)
            try:
                label = store.get(other, include_forgotten=True).content or "(forgotten)"
            except CairnError:
                label = "(not on this device)"
            neighbours.append(Neighbour(label, f"/memories/{other}", phrase))
        conflicts = [c for c in store.sync_state.conflicts() if c.memory_id == found.id]
        return pages.render(
            request,
            "memory.html",
            _title(found.content),
            "/",
            memory=found,
            neighbours=neighbours,
            graph=relation_graph("Related memories", found.content, neighbours),
            conflicts=conflicts,
            kinds=sorted({*model.KINDS, found.kind}),
        )

    def write(request: Request, memory_id: str, change: Callable[[], str]) -> Any:
        try:
            what = change()
        except CairnError as exc:
            return pages.problem(request, exc, "/")
        return done("/" if what == "forgotten" else f"/memories/{memory_id}", what)

    @app.post("/memories/{memory_id}/edit", include_in_schema=False, dependencies=[pages.guard()])
    def edit(
        request: Request,
        memory_id: str,
        content: Annotated[str, Form(max_length=model.MAX_CONTENT_BYTES)],
        kind: Annotated[str, Form(max_length=64)],
    ) -> Any:
        def change() -> str:
            current = store.get(memory_id)
            text = content.replace("\r\n", "\n")
            store.edit(
                current.id,
                content=None if text == current.content else text,
                kind=None if kind == current.kind else kind,
            )
            return "edited"

        return write(request, memory_id, change)

    @app.post("/memories/{memory_id}/tags", include_in_schema=False, dependencies=[pages.guard()])
    def add_tags(
        request: Request, memory_id: str, tags: Annotated[str, Form(max_length=2000)]
    ) -> Any:
        def change() -> str:
            store.edit(memory_id, tags=[t for t in tags.replace(",", " ").split() if t])
            return "tagged"

        return write(request, memory_id, change)

    @app.post("/memories/{memory_id}/forget", include_in_schema=False, dependencies=[pages.guard()])
    def forget(request: Request, memory_id: str) -> Any:
        def change() -> str:
            store.forget(memory_id)
            return "forgotten"

        return write(request, memory_id, change)

    @app.get("/timeline", include_in_schema=False)
    def timeline(
        request: Request,
        days: Annotated[int, Query(ge=7, le=366)] = 30,
        by: Annotated[str, Query(pattern="^(kind|project)$")] = "kind",
    ) -> HTMLResponse:
        today = datetime.now(UTC).date()
        first = today - timedelta(days=days - 1)
        since = int(datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp() * 1000)
        with store.db.read() as conn:
            rows = search_queries.per_day(conn, by, since, Filters())
        labels = [(first + timedelta(days=n)).isoformat() for n in range(days)]
        series = day_series(labels, rows)
        short = [label[5:] for label in labels]  # MM-DD under the bars
        return pages.render(
            request,
            "timeline.html",
            "Timeline",
            "/timeline",
            chart=charts.bars(f"Memories per day by {by}", short, series),
            series=series,
            labels=labels,
            days=days,
            by=by,
            total=sum(n for _, _, n in rows),
        )


def day_series(labels: list[str], rows: list[tuple[str, str, int]]) -> list[charts.Series]:
    """One series per value, largest first; past ``_SERIES`` values, the rest as "other"."""
    at = {label: i for i, label in enumerate(labels)}
    totals: dict[str, int] = {}
    for _, value, n in rows:
        totals[value] = totals.get(value, 0) + n
    ranked = sorted(totals, key=lambda v: (-totals[v], v))
    kept = ranked[:_SERIES]
    values: dict[str, list[float]] = {v: [0.0] * len(labels) for v in kept}
    if len(ranked) > len(kept):
        values["other"] = [0.0] * len(labels)
    for day, value, n in rows:
        if day in at:
            values[value if value in kept else "other"][at[day]] += n
    return [charts.Series(name, v) for name, v in values.items()]


def _title(content: str, most: int = 60) -> str:
    line = " ".join(content.split())
    return line if len(line) <= most else line[: most - 1] + "…"
