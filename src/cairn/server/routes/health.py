"""The sync server's unauthenticated routes: liveness and Prometheus metrics."""

from __future__ import annotations

from fastapi import Response
from fastapi.responses import PlainTextResponse

from cairn import views
from cairn.http_schemas import HealthOut
from cairn.server.metrics import CONTENT_TYPE
from cairn.server.routes.common import Context, new_router

router = new_router()


@router.get(
    "/healthz",
    response_model=HealthOut,
    tags=["server"],
    summary="Liveness check (no key needed)",
)
def health() -> dict[str, str]:
    return views.health()


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    tags=["server"],
    summary="Prometheus metrics (no key needed)",
    responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}},
)
def metrics(ctx: Context) -> Response:
    begun = ctx.storage.transactions()  # before this scrape's own read of the totals
    text = ctx.metrics.render(ctx.storage.totals(), ctx.notifier.waiting, begun, len(ctx.key_cache))
    return PlainTextResponse(text, media_type=CONTENT_TYPE)
