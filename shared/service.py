"""The runtime every service shares, and the app factory that wires a service together.

A service provides its HTTP router, its event handlers and its index set-up;
`create_service_app` gives it MongoDB, the idempotent producer, the outbox
relay, the inbox-guarded consumer, /healthz, /readyz and /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from pymongo import AsyncMongoClient

from shared import logs
from shared.auth import UsedSignatures, actor_key
from shared.consumer import EventConsumer, Handlers, ensure_inbox_indexes
from shared.events.registry import stream_topic
from shared.http import document_errors, install_error_handlers, install_middleware
from shared.kafka import ensure_topics, make_producer
from shared.metrics import LOOP_LAG
from shared.mongo import Database, Document, connect
from shared.outbox import OutboxRelay, UnitOfWork, ensure_outbox_indexes
from shared.run import freeze_startup_heap
from shared.settings import Settings
from shared.time import advance_clock, utcnow
from shared.timers import TimerContext, TimerLoop, Timers, ensure_timer_indexes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceSpec:
    """What makes one service: its name, routes, handlers and storage set-up."""

    name: str
    title: str
    description: str
    router: APIRouter
    handlers: Handlers = field(default_factory=Handlers)
    ensure_indexes: Callable[[Database], Awaitable[None]] | None = None
    publishes: tuple[str, ...] = ()  # streams this service writes to
    timers: Timers = field(default_factory=Timers)
    # Extra resources that live as long as the app (e.g. the gateway's HTTP client).
    lifespan: Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]] | None = None


class Runtime:
    """Connections and background loops of one service process."""

    def __init__(self, spec: ServiceSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings
        self.client: AsyncMongoClient[Document] = connect(settings)
        self.db: Database = self.client[settings.database_name]
        # The relay and the consumer's dead letters each have a producer of their own, which
        # each replaces when it loses its sequence state.
        self.relay = OutboxRelay(
            self.db,
            make_producer(settings),
            settings,
            fresh_producer=lambda: make_producer(settings),
        )
        self.uow = UnitOfWork(
            self.client,
            self.db,
            settings,
            on_commit=self.relay.committed,
            on_timer_set=self._wake_timers,
        )
        self.consumer = (
            EventConsumer(
                settings,
                self.db,
                self.uow,
                make_producer(settings),
                spec.handlers,
                fresh_producer=lambda: make_producer(settings),
                before_leaving=self.relay.sent_what_was_handed,
            )
            if spec.handlers.models()
            else None
        )
        self.timer_loop = (
            TimerLoop(
                spec.timers,
                TimerContext(self.db, self.uow, settings),
                settings.timer_poll_interval_s,
            )
            if spec.timers.kinds()
            else None
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._relay_task: asyncio.Task[None] | None = None
        self.started = False

    async def start(self) -> None:
        await ensure_outbox_indexes(self.db)
        await ensure_inbox_indexes(self.db)
        await ensure_timer_indexes(self.db)
        if self.spec.ensure_indexes:
            await self.spec.ensure_indexes(self.db)
        topics = [self.settings.topic(stream_topic(s)) for s in self.spec.publishes]
        if self.consumer:
            topics += [*self.consumer.topics, self.settings.dead_letter_topic]
        await ensure_topics(self.settings, topics)
        if self.consumer:
            await self.consumer.producer.start()
        await self.relay.producer.start()
        self._relay_task = asyncio.create_task(
            self._supervise("outbox-relay", self.relay.run_forever)
        )
        if self.consumer:
            self._tasks.append(
                asyncio.create_task(self._supervise("consumer", self.consumer.run_forever))
            )
        if self.timer_loop:
            self._tasks.append(
                asyncio.create_task(self._supervise("timers", self.timer_loop.run_forever))
            )
        self._tasks.append(asyncio.create_task(watch_loop_lag(self.settings.service_name)))
        self.started = True

    async def stop(self) -> None:
        """The work first (the consumer's lanes, timers), then the relay once it has sent
        what that work committed: stopping all at once left those rows to another replica's
        sweep, seconds after the next owner of their keys had published what came next."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._relay_task is not None:
            with contextlib.suppress(Exception):
                await self.relay.sent_what_was_handed()
            self._relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relay_task
        if self.consumer:
            await self.consumer.producer.stop()
        await self.relay.producer.stop()
        await self.client.close()

    def _wake_timers(self, due: datetime) -> None:
        if self.timer_loop:
            self.timer_loop.wake(due)

    async def _supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Keep a background loop alive: log a crash and restart it with backoff."""
        delay = 0.5
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s crashed; restarting in %.1fs", name, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def readiness(self) -> dict[str, Any]:
        checks: dict[str, Any] = {"started": self.started}
        try:
            async with asyncio.timeout(2):  # not wait_for: it may lose a cancellation
                await self.client.admin.command("ping")
            checks["mongodb"] = "ok"
        except Exception as exc:  # any failure means not ready; say which
            checks["mongodb"] = f"error: {type(exc).__name__}"
        if self.consumer is not None:
            checks["consumer_assigned"] = self.consumer.assigned.is_set()
        return checks


LOOP_LAG_EVERY_S = 0.05


async def watch_loop_lag(service: str) -> None:
    """Sleep 50 ms at a time and record how late each wake-up came: a handler that holds the
    loop, a long garbage collection or a machine short of CPU shows up here as latency every
    request and event in the process pays."""
    loop, lag = asyncio.get_running_loop(), LOOP_LAG.labels(service)
    while True:
        asleep_at = loop.time()
        await asyncio.sleep(LOOP_LAG_EVERY_S)
        lag.observe(max(loop.time() - asleep_at - LOOP_LAG_EVERY_S, 0.0))


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_runtime(request: Request) -> Runtime:
    # async: FastAPI runs a plain-def dependency in a worker thread, a hop per request.
    return runtime_of(request)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


class ClockIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    advance_s: float = Field(ge=0, le=365 * 86400)


class ClockOut(BaseModel):
    offset_s: float
    now: datetime


# Mounted only with DOORSTEP_TEST_CLOCK=1: lets a test move this process's clock forward so
# deadlines of hours pass in seconds. Never in production (and not in the API reference).
testing_router = APIRouter(include_in_schema=False)


@testing_router.post("/testing/clock")
async def move_clock(body: ClockIn) -> ClockOut:
    offset = advance_clock(body.advance_s)
    return ClockOut(offset_s=offset.total_seconds(), now=utcnow())


class Readiness(BaseModel):
    status: str = Field(examples=["ready"])
    checks: dict[str, Any]


def create_service_app(spec: ServiceSpec, settings: Settings | None = None) -> FastAPI:
    settings = (settings or Settings()).model_copy(update={"service_name": spec.name})
    logs.configure_logging(spec.name, settings.log_level, settings.log_json)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.actor_key = actor_key(settings.actor_key)
        app.state.used_signatures = UsedSignatures()
        runtime = Runtime(spec, settings)
        app.state.runtime = runtime
        await runtime.start()
        log.info("%s started", spec.name, extra=logs.log_fields(db=settings.database_name))
        try:
            async with spec.lifespan(app) if spec.lifespan else contextlib.nullcontext():
                freeze_startup_heap()
                yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title=spec.title, description=spec.description, version="0.1.0", lifespan=lifespan
    )
    install_error_handlers(app)
    install_middleware(app, spec.name, settings.max_body_bytes)
    document_errors(app)
    app.include_router(spec.router)
    if settings.test_clock:
        app.include_router(testing_router)

    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": spec.name}

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="Connected and consuming",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Not ready yet (or any more)"}},
    )
    async def readyz(runtime: RuntimeDep) -> JSONResponse:
        checks = await runtime.readiness()
        ready = checks["started"] and checks["mongodb"] == "ok"
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
    )
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
