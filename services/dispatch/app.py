"""Wires the dispatch service: routes, handlers, storage."""

from __future__ import annotations

# Matching's numpy and scipy, loaded with the service and not by its first matching round
# (domain.match_optimal imports them where it uses them, for the gateway's sake).
import scipy.optimize  # noqa: F401
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
