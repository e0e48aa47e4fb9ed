"""Durable timers: "time is an event source too".

Offer deadlines, matching rounds, complaint SLA clocks: a service stores the
due time in its own `timers` collection (inside the unit of work that makes it
due, so the timer and the state change commit together) and a loop fires it.

Firing claims a timer by pushing its `due_at` forward by a lease; the handler
runs (and opens its own units of work); success deletes the timer only if
nobody moved it meanwhile. A process that dies mid-fire leaves the timer to be
fired again when the lease runs out, so handlers must be idempotent (they look
at the state they own before acting, like event handlers do).

A gathered timer ("match the region's waiting visits") is asked for by many
units of work at once. Each request is a document of its own, so no two
transactions write the same one (they would make each other start again), and
one firing answers every request that existed when it was claimed. While one
process fires a gathered timer, the others leave it alone: its requests made
meanwhile are fired next by whoever looks first once it is done.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
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
from shared.time import backoff, stored_precision, utcnow, woken

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
    await db[TIMERS].create_indexes(
        [
            IndexModel([("due_at", ASCENDING)], name="due"),
            IndexModel(
                [("kind", ASCENDING), ("subject", ASCENDING)],
                name="gathered",
                partialFilterExpression={"gathered": True},
            ),
        ]
    )


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
    gather: bool = False,
) -> str:
    """Set the timer `kind:subject` to fire at `due_at` (one timer per kind and subject).

    `gather=True` adds a request instead: the next firing of `kind:subject` answers every
    request stored by then, and requests due later are answered by it too (the earliest
    wins). Nothing is overwritten, so concurrent requests never conflict. A gathered
    request carries no data (one firing answers many) and is not cancelled.
    """
    if gather and data:
        raise ValueError("a gathered timer's requests carry no data: one firing answers many")
    tid = timer_id(kind, subject)
    fields: Document = {"kind": kind, "subject": subject, "data": data or {}}
    if gather:
        request_id = f"{tid}:{uuid.uuid4().hex[:16]}"
        await db[TIMERS].insert_one(
            {"_id": request_id, **fields, "due_at": due_at, "gathered": True}, session=session
        )
        return request_id
    # `requests` counts every call, so a firing that began before this one cannot delete
    # the timer even if this call set the same due time.
    await db[TIMERS].update_one(
        {"_id": tid},
        {"$set": {**fields, "due_at": due_at}, "$inc": {"requests": 1}},
        upsert=True,
        session=session,
    )
    return tid


async def set_timer(
    tx: Transaction,
    kind: str,
    subject: str,
    due_at: datetime,
    *,
    data: dict[str, Any] | None = None,
    gather: bool = False,
) -> str:
    """`schedule` inside a unit of work, which wakes this process's timer loop once it
    commits if the timer is due before the loop's next look: a timer due now fires now,
    not at the next poll."""
    due = due_at if due_at.tzinfo else due_at.replace(tzinfo=UTC)  # stored times are UTC
    tx.timer_due = due if tx.timer_due is None else min(tx.timer_due, due)
    return await schedule(tx.db, tx.session, kind, subject, due_at, data=data, gather=gather)


def gathered_group(head: Document) -> Document:
    """What finds every request of a gathered timer."""
    return {"kind": head["kind"], "subject": head["subject"], "gathered": True}


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
        timers = self._ctx.db[TIMERS]
        busy: list[Document] = []  # gathered timers another process is firing: not ours
        while True:
            now = utcnow()
            # Read the earliest first: most wake-ups find nothing due yet, and a read costs
            # less than a claim that matches nothing (a write waiting on its write concern).
            head = await timers.find_one(
                {"$nor": busy} if busy else {}, sort=[("due_at", ASCENDING)]
            )
            self._next_due = None if head is None else head["due_at"]
            if head is None or head["due_at"] > now:
                return fired
            # As the server stores it, to match it later.
            leased = stored_precision(now + self._lease)
            if head.get("gathered") and await self._held_elsewhere(head, now):
                # One firing at a time: whoever fires it now fires what is asked meanwhile
                # next (or, were it to die, anyone does once its lease is over).
                busy.append(gathered_group(head))
                continue
            held = await self._claim(head, now, leased)
            if held is None:
                continue  # another process claimed it first, or it was asked for again
            attempts = int(head.get("attempts", 0)) + 1
            timer = Timer(head["_id"], head["kind"], head["subject"], leased, head["data"])
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
                retry_at = utcnow() + timedelta(seconds=backoff(attempts, 0.4, 60))
                log.exception("timer %s failed (attempt %d)", timer.timer_id, attempts)
                # Gathered requests are let go, not held through the back-off: a held one
                # would keep every other process from firing their timer until then.
                await timers.update_many(
                    held, {"$set": {"due_at": retry_at}, "$unset": {"leased_by": ""}}
                )
                continue
            crash_point("timers.after_fire")
            if head.get("gathered"):
                # Requests made during the firing are documents of their own: they stay.
                await timers.delete_many(held)
            else:
                # Delete only if nobody asked again meanwhile.
                done = await timers.delete_one({**held, "requests": head.get("requests")})
                if done.deleted_count == 0:
                    # Asked again while firing but still due at the lease's end: fire now.
                    await timers.update_one(held, {"$set": {"due_at": utcnow()}})
            fired += 1

    async def _claim(self, head: Document, now: datetime, leased: datetime) -> Document | None:
        """Lease what firing `head` answers; returns the filter that finds it, or None if
        another process has it. Claims are updates, not find-and-modify (outside a
        transaction the server also writes that one's result aside, for a retry)."""
        timers = self._ctx.db[TIMERS]
        if head.get("gathered"):
            token = uuid.uuid4().hex
            group = gathered_group(head)
            # Every request stored by now, due or not, unless another firing holds it (a
            # held request's `due_at` is its lease's end: past it, its firing died). Two
            # processes that look at the same moment may both fire, on what each claimed:
            # rare, and the handlers are safe to run side by side, only wasteful.
            claimed = await timers.update_many(
                {**group, "$or": [{"leased_by": {"$exists": False}}, {"due_at": {"$lte": now}}]},
                {"$set": {"due_at": leased, "leased_by": token}, "$inc": {"attempts": 1}},
            )
            return {**group, "leased_by": token} if claimed.modified_count else None
        claimed = await timers.update_one(
            {"_id": head["_id"], "due_at": head["due_at"], "requests": head.get("requests")},
            {"$set": {"due_at": leased}, "$inc": {"attempts": 1}},
        )
        return {"_id": head["_id"], "due_at": leased} if claimed.modified_count else None

    async def _held_elsewhere(self, head: Document, now: datetime) -> bool:
        """Is a live firing (its lease not over) holding requests of `head`'s timer?"""
        held = {**gathered_group(head), "leased_by": {"$exists": True}, "due_at": {"$gt": now}}
        return await self._ctx.db[TIMERS].find_one(held, {"_id": 1}) is not None

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
                await woken(self._woken, sleep_s)
            finally:
                self._asleep_until = None
