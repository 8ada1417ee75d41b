"""The sync server's admin routes: metering (totals, quota, usage per day) and the audit log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

from cairn import http_edge
from cairn.model import MAX_INT, iso
from cairn.server.context import now_ms
from cairn.server.routes.common import KEYED, Admin, Context, new_router
from cairn.server.schemas import AuditOut, UsageOut

router = new_router()


@router.get(
    "/v1/usage",
    response_model=UsageOut,
    tags=["admin"],
    summary="Metering: totals, quota and usage per day",
    responses={**KEYED, **http_edge.errors(422)},
)
def usage(
    ctx: Context,
    key: Admin,
    days: Annotated[int, Query(ge=1, le=366, description="How many days back (UTC).")] = 30,
) -> dict[str, Any]:
    found = ctx.storage.usage(key.workspace_id, days, now_ms())
    return {
        "mutations": found.mutations,
        "stored_bytes": found.stored_bytes,
        "entities": found.entities,
        "memories": found.memories,
        "quota": {
            "max_mutations": found.quota.max_mutations,
            "max_bytes": found.quota.max_bytes,
        },
        "days": [vars(day) for day in found.days],
    }


@router.get(
    "/v1/audit",
    response_model=AuditOut,
    tags=["admin"],
    summary="Who did what, newest first",
    responses={**KEYED, **http_edge.errors(422)},
)
def audit(
    ctx: Context,
    key: Admin,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[
        int | None,
        Query(ge=0, le=MAX_INT, description="Only entries older than this (Unix ms): paging."),
    ] = None,
) -> dict[str, Any]:
    entries = ctx.storage.audit_log(key.workspace_id, limit, before)
    return {
        "entries": [
            {
                "at": iso(e.at),
                "at_ms": e.at,
                "key_id": e.key_id,
                "action": e.action,
                "detail": e.detail,
            }
            for e in entries
        ],
        "next_before": entries[-1].at if len(entries) == limit else None,
    }
