"""Wires the reviews service: routes, handlers, storage."""

from __future__ import annotations

from fastapi import FastAPI

from services.reviews import api, handlers, storage
from shared.service import ServiceSpec, create_service_app
from shared.settings import Settings

SPEC = ServiceSpec(
    name="reviews",
    title="Doorstep reviews",
    description="Ratings, complaints with deadlines and escalation, technician quality.",
    router=api.router,
    handlers=handlers.handlers,
    timers=handlers.timers,
    ensure_indexes=storage.ensure_indexes,
    publishes=("reviews",),
)


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service_app(SPEC, settings)
