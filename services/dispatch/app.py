"""Wires the dispatch service: routes, handlers, storage."""

from __future__ import annotations

from fastapi import FastAPI

from services.dispatch import api, handlers, storage
from shared.service import ServiceSpec, create_service_app
from shared.settings import Settings

SPEC = ServiceSpec(
    name="dispatch",
    title="Doorstep dispatch",
    description="Technicians' files, matching, offers and reassignment, the visit at the door.",
    router=api.router,
    handlers=handlers.handlers,
    timers=handlers.timers,
    ensure_indexes=storage.ensure_indexes,
    publishes=("dispatch",),
)


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service_app(SPEC, settings)
