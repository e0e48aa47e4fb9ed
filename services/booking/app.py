"""Wires the booking service: routes, handlers, storage."""

from __future__ import annotations

from fastapi import FastAPI

from services.booking import api, handlers, storage
from shared.events.booking import FOLLOW_UP, STREAM, TIMELINE
from shared.service import ServiceSpec, create_service_app
from shared.settings import Settings

SPEC = ServiceSpec(
    name="booking",
    title="Doorstep booking",
    description="The published catalogue and prices, customers and the booking lifecycle.",
    router=api.router,
    handlers=handlers.handlers,
    ensure_indexes=storage.ensure_indexes,
    publishes=(STREAM, TIMELINE, FOLLOW_UP),
    timers=handlers.timers,
)


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service_app(SPEC, settings)
