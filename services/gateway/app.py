"""Wires the gateway: the /v1 routes and the upstream client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI

from services.gateway import api, handlers, signin, storage
from services.gateway.upstream import Upstream, UpstreamSettings
from shared.service import ServiceSpec, create_service_app
from shared.settings import Settings


@contextlib.asynccontextmanager
async def upstream_client(app: FastAPI) -> AsyncIterator[None]:
    app.state.upstream = Upstream(UpstreamSettings())
    try:
        yield
    finally:
        await app.state.upstream.close()


router = APIRouter()
router.include_router(signin.router)
router.include_router(api.router)
router.include_router(signin.dev_router)

SPEC = ServiceSpec(
    name="gateway",
    title="Doorstep API",
    description="One REST API for mobile apps, partner stores and operations.",
    router=router,
    handlers=handlers.handlers,
    ensure_indexes=storage.ensure_indexes,
    lifespan=upstream_client,
)


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service_app(SPEC, settings)
