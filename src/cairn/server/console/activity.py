"""The admin console's pages of what a workspace did: activity per hour, usage, the audit log."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from markupsafe import Markup

from cairn.model import MAX_INT
from cairn.server.console.pages import Ctx, Page, open_workspace, render
from cairn.server.console.workspace import Name
from cairn.server.context import now_ms
from cairn.server.schemas import KEY_ID_PATTERN
from cairn.server.storage import DAY_MS, ActivityHour, UsageDay, WorkspaceSummary
from cairn.web.charts import Series, lines

router = APIRouter()

HOURS = 48
"""Hours of activity the chart shows."""
DAYS = 30
"""Days of usage the chart shows."""
AUDIT_PAGE = 50
ACTIONS = (
    "push", "pull", "recall", "remember", "edit", "forget", "device_register", "keyring_put",
    "keyring_rollback", "key_create", "key_revoke", "auth_failed", "console_sign_in",
    "console_sign_out", "console_refused", "workspace_create", "quota_set",
)  # fmt: skip
"""Actions the audit page's filter suggests (any other name may be typed)."""
_HOUR = 3_600_000


@router.get("/w/{name}/activity")
def activity_page(request: Request, ctx: Ctx, session: Page, name: Name) -> Response:
    workspace = open_workspace(ctx, session, name)
    now = now_ms()
    start = now - now % _HOUR - (HOURS - 1) * _HOUR
    hours = ctx.storage.activity(workspace.id, start)
    summary = ctx.storage.summary(workspace.id)
    days = ctx.storage.usage_days(workspace.id, DAYS, now)
    return render(
        request,
        "console/activity.html",
        session,
        workspace=workspace,
        title=f"Activity of {workspace.name}",
        activity=activity_chart(hours, start),
        totals=[sum(getattr(h, f) for h in hours) for f in ("pushes", "pulls", "mutations")],
        held=held_chart(summary, days, now),
        summary=summary,
        days=days,
    )


@router.get("/w/{name}/audit")
def audit_page(
    request: Request,
    ctx: Ctx,
    session: Page,
    name: Name,
    action: Annotated[str, Query(pattern=r"^[a-z_]{0,40}$")] = "",
    key: Annotated[str, Query(pattern=f"^(?:{KEY_ID_PATTERN[1:-1]})?$")] = "",
    before: Annotated[int | None, Query(ge=0, le=MAX_INT)] = None,
) -> Response:
    workspace = open_workspace(ctx, session, name)
    entries = ctx.storage.audit_log(workspace.id, AUDIT_PAGE, before, action or None, key or None)
    older = entries[-1].at if len(entries) == AUDIT_PAGE else None
    return render(
        request,
        "console/audit.html",
        session,
        workspace=workspace,
        title=f"Audit log of {workspace.name}",
        entries=entries,
        action=action,
        key=key,
        before=before,
        older=older,
        actions=ACTIONS,
    )


def activity_chart(hours: list[ActivityHour], start: int) -> Markup:
    """Pushes, pulls and mutations stored per hour over the last ``HOURS`` hours."""
    found = {h.hour: h for h in hours}
    slots = [found.get(start + i * _HOUR, ActivityHour(start + i * _HOUR)) for i in range(HOURS)]
    labels = [datetime.fromtimestamp(h.hour / 1000, UTC).strftime("%d %H:00") for h in slots]
    return lines(
        f"Activity per hour, last {HOURS} hours (UTC)",
        labels,
        [
            Series("pushes", [h.pushes for h in slots]),
            Series("pulls", [h.pulls for h in slots]),
            Series("changes stored", [h.mutations for h in slots]),
        ],
    )


def held_chart(summary: WorkspaceSummary, days: list[UsageDay], now: int) -> Markup:
    """Changes held at the end of each of the last ``DAYS`` days, against the quota's limit."""
    added = {d.day: d.mutations for d in days}
    held, labels, values = summary.latest_seq, [], []
    for i in range(DAYS):
        day = datetime.fromtimestamp((now - i * DAY_MS) / 1000, UTC).strftime("%Y-%m-%d")
        labels.append(day[5:])
        values.append(held)
        held = max(held - added.get(day, 0), 0)
    series = [Series("changes held", values[::-1])]
    if summary.quota.max_mutations is not None:
        series.append(Series("quota", [summary.quota.max_mutations] * DAYS))
    return lines(f"Changes held per day, last {DAYS} days", labels[::-1], series)
