"""Wires the gateway: the /v1 routes and the upstream client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI

from services.booking import api as booking_api
from services.dispatch import api as dispatch_api
from services.gateway import (
    api,
    board,
    dashboard,
    handlers,
    notify,
    proxy,
    signin,
    storage,
    webhooks,
)
from services.gateway.hub import running, watching
from services.gateway.limits import RateLimiter, StreamSlots
from services.gateway.security import SignInChecks, VerifyingKeys
from services.gateway.tokens import VerifiedTokens
from services.gateway.upstream import Upstream, UpstreamSettings
from services.payments import api as payments_api
from services.reviews import api as reviews_api
from shared.mongo import Database
from shared.service import ServiceSpec, create_service_app
from shared.settings import Settings


@contextlib.asynccontextmanager
async def edge_state(app: FastAPI) -> AsyncIterator[None]:
    """Limiters, the upstream client, and the change-stream hubs the live streams share."""
    settings = Settings()
    app.state.limiter = RateLimiter(settings.gateway_rate_per_s, settings.gateway_burst)
    app.state.signin_limiter = RateLimiter(settings.signin_rate_per_s, settings.signin_burst)
    app.state.sms_limiter = RateLimiter(settings.sms_per_s, settings.sms_burst)
    app.state.sms_per_address = RateLimiter(
        settings.sms_per_address_per_s, settings.sms_per_address
    )
    app.state.sms_per_network = RateLimiter(
        settings.sms_per_network_per_s, settings.sms_per_network
    )
    app.state.staff_failures = RateLimiter(settings.staff_failures_per_s, settings.staff_failures)
    app.state.staff_failures_here = RateLimiter(
        settings.staff_failures_per_s, settings.staff_failures
    )
    app.state.stream_slots = StreamSlots(settings.streams_per_principal)
    app.state.upstream = Upstream(UpstreamSettings())
    app.state.verifying_keys = VerifyingKeys()
    app.state.verified_tokens = VerifiedTokens()
    app.state.sign_in_checks = SignInChecks(settings.technician_recheck_s)
    db = app.state.runtime.db  # the runtime starts before this lifespan
    # One change stream for every live stream, the notifications' and the board's.
    app.state.live_hub = watching(db, {**notify.WATCHED, **dashboard.WATCHED}, notify.KEYS)
    try:
        async with running(app.state.live_hub):
            yield
    finally:
        await app.state.upstream.close()


router = APIRouter()
router.include_router(signin.router)
router.include_router(api.router)
router.include_router(notify.router)
router.include_router(webhooks.router)
router.include_router(dashboard.router)
router.include_router(dashboard.pages)
# What the other services offer apps, stores and operations, forwarded as the verified caller.
offered = APIRouter(prefix="/v1")
proxy.offer(offered, "booking", booking_api.router, skip={"/bookings/{booking_id}"})
proxy.offer(offered, "dispatch", dispatch_api.router, skip=set())
proxy.offer(offered, "payments", payments_api.router, skip={"/provider/webhook"})
proxy.offer(offered, "reviews", reviews_api.router, skip={"/review-requests/{booking_id}"})
router.include_router(offered)
router.include_router(signin.dev_router)


async def ensure_indexes(db: Database) -> None:
    await storage.ensure_indexes(db)
    await board.ensure_indexes(db)


SPEC = ServiceSpec(
    name="gateway",
    title="Doorstep API",
    description="One REST API for mobile apps, partner stores and operations.",
    router=router,
    handlers=handlers.handlers.merged(board.handlers),
    timers=handlers.timers,
    ensure_indexes=ensure_indexes,
    lifespan=edge_state,
)


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service_app(SPEC, settings)
