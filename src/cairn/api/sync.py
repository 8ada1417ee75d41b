"""The local HTTP API's sync routes: this device's sync state, setting sync up, syncing now."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from cairn import http_edge
from cairn.api.schemas import SyncNowOut, SyncSetupOut, SyncSetupRequest, SyncStatusOut
from cairn.errors import SyncError, SyncNotConfigured
from cairn.wiring import SyncControl

_NO_SYNC: dict[int | str, dict[str, Any]] = {
    400: {"model": http_edge.ErrorOut, "description": "This API runs without sync."}
}
_REMOTE: dict[int | str, dict[str, Any]] = {
    502: {"model": http_edge.ErrorOut, "description": "The remote failed or refused."}
}


def _remote_call(call: Callable[[], Any]) -> Any:
    """``call``'s answer; the remote's failure (not this API's) as a 502 that keeps its code."""
    try:
        return call()
    except SyncNotConfigured:
        raise
    except SyncError as exc:
        return http_edge.error(502, exc.code, exc.message)


def add_sync_routes(app: FastAPI, sync: SyncControl | None) -> None:
    """Add the /v1/sync routes, answering 400 ``sync_not_configured`` when ``sync`` is None."""

    def control() -> SyncControl:
        if sync is None:
            raise SyncNotConfigured("this API was started without sync")
        return sync

    @app.get(
        "/v1/sync/status",
        response_model=SyncStatusOut,
        tags=["sync"],
        summary="This device's sync state",
        description=(
            "Answered from the store without asking the remote: what waits to be sent, what "
            "was refused, and what the background sync worker (in any process) last reported."
        ),
        responses=_NO_SYNC,
    )
    def sync_status() -> dict[str, Any]:
        return control().status()

    @app.post(
        "/v1/sync/setup",
        response_model=SyncSetupOut,
        tags=["sync"],
        summary="Set up sync",
        description=(
            "What `cairn sync setup` does: check the remote, create or unlock the workspace's "
            "end-to-end encrypted keyring (passphrase or recovery key), register this device "
            "and save the settings; the background worker then syncs on its own. A new "
            "workspace's recovery key is in the answer, once. 400 `sync_not_configured` when "
            "this API runs without sync; 422 for bad options (a folder that does not exist "
            "without `create`, a passphrase under 8 characters); 502 with the remote's reason "
            "code when it cannot be reached or refuses."
        ),
        responses={**_NO_SYNC, **http_edge.errors(422), **_REMOTE},
    )
    def sync_setup(body: SyncSetupRequest) -> Any:
        running = control()
        url = Path(body.remote).as_uri() if body.remote.startswith("/") else body.remote
        options = body.model_dump(exclude={"remote", "passphrase", "name"})
        return _remote_call(
            lambda: running.setup(
                url, passphrase=body.passphrase, device_name=body.name, **options
            ).to_dict()
        )

    @app.post(
        "/v1/sync/now",
        response_model=SyncNowOut,
        tags=["sync"],
        summary="Sync now",
        description=(
            "One full round (push, pull, push what the pull changed), run by the store's sync "
            "worker if one runs. 400 `sync_not_configured` before `cairn sync setup`; 502 with "
            "the remote's reason code (unreachable, auth_failed, quota_exceeded, ...) when the "
            "round fails; nothing local is lost either way."
        ),
        responses={
            400: {"model": http_edge.ErrorOut, "description": "Sync is not set up."},
            **_REMOTE,
        },
    )
    def sync_now() -> Any:
        return _remote_call(control().now)
