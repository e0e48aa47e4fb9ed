"""Durable timers: "time is an event source too".

Offer deadlines, matching rounds, complaint SLA clocks: a service stores the
due time in its own `timers` collection (inside the unit of work that makes it
due, so the timer and the state change commit together) and a loop fires it.

Firing claims a timer by pushing its `due_at` forward by a lease; the handler
runs (and opens its own units of work); success deletes the timer only if
nobody moved it meanwhile. A process that dies mid-fire leaves the timer to be
fired again when the lease runs out, so handlers must be idempotent (they look
at the state they own before acting, like event handlers do).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession

from shared.faults import crash_point
from shared.mongo import Database, Document
from shared.outbox import Transaction, UnitOfWork
from shared.settings import Settings
from shared.time import stored_precision, utcnow

log = logging.getLogger(__name__)

TIMERS = "timers"


@dataclass(frozen=True)
class Timer:
    timer_id: str
    kind: str
    subject: str
    due_at: datetime
    data: dict[str, Any]


@dataclass(frozen=True)
class TimerContext:
    """What a timer handler may use: the database and units of work."""

    db: Database
    uow: UnitOfWork
    settings: Settings


TimerHandler = Callable[[TimerContext, Timer], Awaitable[None]]


class Timers:
    """A service's timer handlers by kind: `@timers.on("offer_deadline")`."""

    def __init__(self) -> None:
        self._by_kind: dict[str, TimerHandler] = {}

    def on(self, kind: str) -> Callable[[TimerHandler], TimerHandler]:
        def register(fn: TimerHandler) -> TimerHandler:
            if kind in self._by_kind:
                raise ValueError(f"two handlers for timer {kind}")
            self._by_kind[kind] = fn
            return fn

        return register

    def handler(self, kind: str) -> TimerHandler | None:
        return self._by_kind.get(kind)

    def kinds(self) -> list[str]:
        return sorted(self._by_kind)


async def ensure_timer_indexes(db: Database) -> None:
    await db[TIMERS].create_indexes([IndexModel([("due_at", ASCENDING)], name="due")])


def timer_id(kind: str, subject: str) -> str:
    return f"{kind}:{subject}"


async def schedule(
    db: Database,
    session: AsyncClientSession | None,
    kind: str,
    subject: str,
    due_at: datetime,
    *,
    data: dict[str, Any] | None = None,
    earliest: bool = False,
) -> str:
    """Set the timer `kind:subject` to fire at `due_at` (one timer per kind and subject).

    `earliest=True` keeps an earlier due time already set: many requests, one round.
    """
    tid = timer_id(kind, subject)
    fields: Document = {"kind": kind, "subject": subject, "data": data or {}}
    # `requests` counts every call: even when `$min` keeps an earlier due time, the timer
    # document changes, so a firing that began before this request cannot delete it.
    update: Document = (
        {"$set": fields, "$min": {"due_at": due_at}, "$inc": {"requests": 1}}
        if earliest
        else {"$set": {**fields, "due_at": due_at}, "$inc": {"requests": 1}}
    )
    await db[TIMERS].update_one({"_id": tid}, update, upsert=True, session=session)
    return tid


async def set_timer(
    tx: Transaction,
    kind: str,
    subject: str,
    due_at: datetime,
    *,
    data: dict[str, Any] | None = None,
    earliest: bool = False,
) -> str:
    """`schedule` inside a unit of work, which wakes this process's timer loop once it
    commits if the timer is due before the loop's next look: a timer due now fires now,
    not at the next poll."""
    due = due_at if due_at.tzinfo else due_at.replace(tzinfo=UTC)  # stored times are UTC
    tx.timer_due = due if tx.timer_due is None else min(tx.timer_due, due)
    return await schedule(tx.db, tx.session, kind, subject, due_at, data=data, earliest=earliest)


async def cancel(db: Database, session: AsyncClientSession | None, kind: str, subject: str) -> None:
    await db[TIMERS].delete_one({"_id": timer_id(kind, subject)}, session=session)


class TimerLoop:
    """Fires due timers, one at a time, surviving restarts (the timers live in MongoDB)."""

    def __init__(self, timers: Timers, ctx: TimerContext, poll_interval_s: float = 0.1) -> None:
        self._timers = timers
        self._ctx = ctx
        self._poll = poll_interval_s
        # A claimed timer comes back after this long if its process died while firing it.
        self._lease = timedelta(seconds=ctx.settings.timer_lease_s)
        self._woken = asyncio.Event()
        self._next_due: datetime | None = None
        self._asleep_until: datetime | None = None  # None: looking now, or about to

    def wake(self, due: datetime | None = None) -> None:
        """A timer due at `due` was set: look again now, unless the loop sleeps only until
        before then anyway (each look is a read). Polling is the fallback, and for timers
        other processes set."""
        if due is None or self._asleep_until is None or due < self._asleep_until:
            self._woken.set()

    async def fire_due(self) -> int:
        """Fire every timer due now; returns how many fired."""
        fired = 0
        while True:
            now = utcnow()
            # Read the earliest first: most wake-ups find nothing due yet, and a read costs
            # less than a claim that matches nothing (a write waiting on its write concern).
            head = await self._ctx.db[TIMERS].find_one({}, sort=[("due_at", ASCENDING)])
            self._next_due = None if head is None else head["due_at"]
            if head is None or head["due_at"] > now:
                return fired
            # Claim exactly what was read: an update, not a find-and-modify (outside a
            # transaction the server also writes that one's result aside, for a retry).
            leased = stored_precision(
                now + self._lease
            )  # as the server stores it, to match it later
            claimed = await self._ctx.db[TIMERS].update_one(
                {"_id": head["_id"], "due_at": head["due_at"], "requests": head.get("requests")},
                {"$set": {"due_at": leased}, "$inc": {"attempts": 1}},
            )
            if claimed.modified_count == 0:
                continue  # another process claimed it first, or it was asked for again
            doc = {**head, "due_at": leased, "attempts": int(head.get("attempts", 0)) + 1}
            timer = Timer(doc["_id"], doc["kind"], doc["subject"], doc["due_at"], doc["data"])
            handler = self._timers.handler(timer.kind)
            if handler is None:
                log.error("no handler for timer %s; it stays for a later release", timer.timer_id)
                continue
            try:
                await handler(self._ctx, timer)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The lease brings it back; back off so one failing timer does not spin.
                attempts = int(doc.get("attempts", 1))
                retry_at = utcnow() + timedelta(seconds=min(0.2 * 2**attempts, 60))
                log.exception("timer %s failed (attempt %d)", timer.timer_id, attempts)
                await self._ctx.db[TIMERS].update_one(
                    {"_id": timer.timer_id, "due_at": timer.due_at}, {"$set": {"due_at": retry_at}}
                )
                continue
            crash_point("timers.after_fire")
            # Delete only if nobody asked again meanwhile (a request during the firing, even
            # one that kept the due time, means: fire again, it may have work for us).
            done = await self._ctx.db[TIMERS].delete_one(
                {"_id": timer.timer_id, "due_at": timer.due_at, "requests": doc.get("requests")}
            )
            if done.deleted_count == 0:
                # Asked again while firing but still due at the lease's end: fire now.
                await self._ctx.db[TIMERS].update_one(
                    {"_id": timer.timer_id, "due_at": timer.due_at},
                    {"$set": {"due_at": utcnow()}},
                )
            fired += 1

    def next_due_in(self) -> float:
        """How long to sleep: until the earliest timer the last look saw, at most a poll."""
        if self._next_due is None:
            return self._poll
        return max(0.0, min(self._poll, (self._next_due - utcnow()).total_seconds()))

    async def run_forever(self) -> None:
        while True:
            self._woken.clear()
            await self.fire_due()
            sleep_s = self.next_due_in()
            self._asleep_until = utcnow() + timedelta(seconds=sleep_s)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), sleep_s)
            finally:
                self._asleep_until = None
