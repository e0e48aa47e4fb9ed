"""Wires the payments service: routes, handlers, storage."""

from __future__ import annotations

from fastapi import FastAPI

from services.payments import api, handlers, storage
from shared.service import ServiceSpec, create_service_app
from shared.settings import Settings

SPEC = ServiceSpec(
    name="payments",
    title="Doorstep payments",
    description="Itemised receipts, prepaid cards and packages, payments and refunds.",
    router=api.router,
    handlers=handlers.handlers,
    timers=handlers.timers,
    ensure_indexes=storage.ensure_indexes,
    publishes=("payments",),
)


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service_app(SPEC, settings)
