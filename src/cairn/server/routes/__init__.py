"""The sync server's routes, one module per group; ``router`` holds them all in document order."""

from fastapi import APIRouter

from cairn.server.routes import admin, devices, health, hosted, keyring, keys, sync

router = APIRouter()
for _group in (health, sync, admin, hosted, keyring, devices, keys):
    router.include_router(_group.router)

__all__ = ["router"]
