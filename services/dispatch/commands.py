"""Dispatch's units of work: matching rounds, offers, reassignment, the visit's steps.

The HTTP API, the event handlers and the timers all change visits through
here, so every change is saved with its version check and published through
the outbox the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from services.dispatch.domain import (
    HALTING_ALERTS,
    HOLDS_TIME,
    REPLACEABLE,
    AlertKind,
    RaisedAlert,
    Technician,
    TechnicianIdentity,
    TechnicianStatus,
    Visit,
    VisitStatus,
    code_digest,
    cost_km,
    match_optimal,
    travel_time,
    unqualified,
    visit_code,
    why_not,
)
from services.dispatch.storage import SafetyAlerts, Technicians, Visits, visit_code_key
from shared.errors import Conflict, NotFound, VersionMismatch
from shared.events.dispatch import (
    DispatchFailed,
    OfferDeclined,
    OfferExpired,
    OfferMade,
    SafetyAlert,
    SafetyAlertAcknowledged,
    SafetyAlertV1,
    SearchResumed,
    TechnicianAssigned,
    TechnicianDetailsChanged,
    TechnicianReassigned,
    TechnicianReleased,
    TechnicianStatusChanged,
)
from shared.outbox import Transaction
from shared.time import utcnow
from shared.timers import TimerContext, cancel, set_timer

log = logging.getLogger(__name__)
T = TypeVar("T")

MATCH_ROUND = "match_round"  # gathered timer per region: one round answers every request
OFFER_DEADLINE = "offer_deadline"  # timer per offer
ARRIVAL_DUE = "arrival_due"  # timer per assigned visit: its latest check-in, and some grace
ROUND_SIZE = 500  # waiting visits matched together at most
CANDIDATES_PER_VISIT = 20
CANDIDATE_PAGES = 6  # pages of 20, 40, ... 640: up to 1,260 nearest qualified per visit
WIDEN_EVERY = 50  # waiting bookings per extra 20 candidates in a round's lists
MAX_FIRST_PAGE = 200
ROUND_CONCURRENCY = 8  # candidate searches of one round run this many at a time


async def load(tx: Transaction, booking_id: str) -> Visit:
    visit = await Visits(tx.db).by_booking(booking_id, tx.session)
    if visit is None:
        raise NotFound(f"no visit for booking {booking_id}")
    return visit


async def save(tx: Transaction, visit: Visit) -> None:
    """Save with the version check, and move the time held on technicians' files."""
    before = await Visits(tx.db).save(visit, tx.session)
    if before is None:
        raise VersionMismatch(f"visit for booking {visit.booking_id} changed meanwhile; retry")
    held_before = _holding(before)
    held_now = _holding(visit)
    if held_before != held_now:
        techs = Technicians(tx.db)
        if held_before is not None:
            await techs.release(held_before[0], visit.visit_id, tx.session)
        if held_now is not None:
            await techs.hold(held_now[0], visit, tx.session)


def _holding(visit: Visit) -> tuple[str, datetime, datetime] | None:
    """Who holds time for this visit, and when (None when nobody does)."""
    if visit.status in HOLDS_TIME and visit.technician_id:
        return visit.technician_id, visit.window_start, visit.busy_until
    return None


async def change(tx: Transaction, booking_id: str, mutate: Callable[[Visit], T]) -> tuple[Visit, T]:
    visit = await load(tx, booking_id)
    result = mutate(visit)
    await save(tx, visit)
    return visit, result


async def request_round(
    tx: Transaction, region: str, *, at_once: bool = False, after_s: float | None = None
) -> None:
    """Ask for a matching round in `region` after the collection window (one per window),
    or `after_s`; an earlier request wins.

    `at_once` skips the window: an answer (decline, silence, drop-out) should move on now.
    """
    wait_s = 0 if at_once else tx.settings.match_window_s if after_s is None else after_s
    due = utcnow() + timedelta(seconds=wait_s)
    await set_timer(tx, MATCH_ROUND, region, due, gather=True)


async def issue_code(tx: Transaction, visit: Visit) -> None:
    """A new assignment, a new code: only its keyed digest is stored."""
    key = await visit_code_key(tx.db, tx.settings)
    code = visit_code(key, visit.visit_id, visit.assignment)
    visit.code_digest = code_digest(key, visit.visit_id, visit.assignment, code)


def replace(tx: Transaction, visit: Visit, reason: str) -> None:
    """Search again; the technician who had accepted is told to booking at once, so they
    stop seeing the customer's home (not when, or if, somebody else accepts)."""
    leaving = visit.replace(reason)
    visit.search_from(utcnow(), timedelta(seconds=tx.settings.search_timeout_s))
    if leaving is not None:
        tx.emit(
            TechnicianReleased(
                booking_id=visit.booking_id,
                visit_id=visit.visit_id,
                technician_id=leaving.technician_id,
                badge_number=leaving.badge_number,
                reason=reason,
            )
        )


def coming(tech: TechnicianIdentity) -> dict[str, Any]:
    """The identity as the events that tell who comes carry it (TechnicianComing)."""
    return {
        "technician_id": tech.technician_id,
        "technician_name": tech.name,
        "badge_number": tech.badge_number,
        "photo_url": tech.photo_url,
        "rating": tech.rating,
        "certificates": tech.certificates,
        "store_id": tech.store_id,
        "phone_masked": tech.phone_masked,
    }


def announce(
    tx: Transaction, visit: Visit, previous: TechnicianIdentity | None, reason: str
) -> None:
    """Tell everyone who is coming; with both identities when somebody else was expected."""
    tech = visit.technician
    assert tech is not None
    identity = coming(tech)
    if previous is not None and previous.technician_id != tech.technician_id:
        tx.emit(
            TechnicianReassigned(
                booking_id=visit.booking_id,
                visit_id=visit.visit_id,
                previous_technician_id=previous.technician_id,
                previous_badge_number=previous.badge_number,
                reason=reason,
                **identity,
            )
        )
    else:
        tx.emit(
            TechnicianAssigned(booking_id=visit.booking_id, visit_id=visit.visit_id, **identity)
        )


async def alert(
    tx: Transaction, visit: Visit, kind: AlertKind, detail: str, *, critical: bool = True
) -> None:
    """Record the alert for operations to acknowledge, and raise it. One that stopped the
    visit also stops its technician's work until operations reinstate them."""
    raised = RaisedAlert(
        alert_id=f"al_{uuid.uuid4().hex[:20]}",
        booking_id=visit.booking_id,
        visit_id=visit.visit_id,
        customer_id=visit.customer_id,
        technician_id=visit.technician_id,
        store_id=visit.technician.store_id if visit.technician else None,
        kind=kind,
        severity="critical" if critical else "warning",
        detail=detail,
        raised_at=utcnow(),
    )
    await SafetyAlerts(tx.db).insert(raised, tx.session)
    # Version 2 only for the kind version 1 cannot carry: a consumer from before reads the rest.
    tx.emit(
        (SafetyAlert if kind is AlertKind.TECHNICIAN_LATE else SafetyAlertV1)(
            booking_id=raised.booking_id,
            visit_id=raised.visit_id,
            customer_id=raised.customer_id,
            technician_id=raised.technician_id,
            kind=kind.value,
            severity=raised.severity,
            detail=detail,
            at=raised.raised_at,
            alert_id=raised.alert_id,
            store_id=raised.store_id,
        )
    )
    # At the door only: before anyone arrived, "not the person" stops this visit alone (a
    # customer could otherwise take a technician off all their work days ahead).
    if kind in HALTING_ALERTS and visit.technician_id and visit.arrived_at is not None:
        await _suspend_for_alert(tx, visit, raised.alert_id, detail)


async def _suspend_for_alert(tx: Transaction, visit: Visit, alert_id: str, detail: str) -> None:
    technician_id = str(visit.technician_id)
    if not await Technicians(tx.db).change_status(
        technician_id, TechnicianStatus.SUSPENDED.value, tx.session, alert_id=alert_id
    ):
        return  # no file (removed meanwhile): nobody to send anywhere
    await stand_down(tx, technician_id, besides=visit.visit_id)
    tx.emit(
        TechnicianStatusChanged(
            technician_id=technician_id,
            status=TechnicianStatus.SUSPENDED.value,
            reason=f"a safety alert stopped their visit ({detail}): until operations reinstate",
        )
    )


async def acknowledge_alert(tx: Transaction, alert_id: str, by: str, note: str) -> RaisedAlert:
    alerts = SafetyAlerts(tx.db)
    raised = await alerts.existing(alert_id, tx.session, what="safety alert")
    raised.acknowledge(by, note, utcnow())
    await alerts.save(raised, tx.session)
    tx.emit(
        SafetyAlertAcknowledged(
            alert_id=alert_id,
            booking_id=raised.booking_id,
            store_id=raised.store_id,
            acknowledged_by=by,
            acknowledged_at=raised.acknowledged_at or utcnow(),
            note=note,
        )
    )
    return raised


def fail(tx: Transaction, visit: Visit, reason: str) -> None:
    visit.fail(reason)
    tx.emit(DispatchFailed(booking_id=visit.booking_id, reason=reason))
    log.info("dispatch failed for booking %s: %s", visit.booking_id, reason)


# ------------------------------------------------------------------ matching --
def day_start(at: datetime) -> datetime:
    return datetime(at.year, at.month, at.day, tzinfo=UTC)


async def ranked_candidates(
    visits: Visits,
    techs: Technicians,
    visit: Visit,
    *,
    first_page: int = CANDIDATES_PER_VISIT,
    decoded: dict[str, Technician] | None = None,
) -> list[tuple[Technician, float, float]]:
    """(technician, distance, cost) for everyone who may go, cheapest first.

    The nearest qualified technicians come a page at a time; when a whole page is
    busy (a dense evening downtown) the next, twice as long, is read, so a free
    technician further away is still found in a few reads.
    """
    need = visit.need()
    seen: list[str] = []
    ranked: list[tuple[Technician, float, float]] = []
    for page in range(CANDIDATE_PAGES):
        size = first_page * 2**page
        found = await techs.candidates(
            need,
            exclude=visit.passed_over + seen,
            limit=size,
            besides=visit.visit_id,
            decoded=decoded,
        )
        if not found:
            break
        ids = [t.technician_id for t, _ in found]
        seen += ids
        calendars = await visits.commitments(ids, need.start, need.end, besides=visit.visit_id)
        load = await visits.given_on_day(ids, day_start(need.start))
        ranked += [
            (
                tech,
                distance,
                cost_km(
                    distance,
                    tech.rating,
                    load[tech.technician_id],
                    tech.technician_id == visit.preferred_technician_id,
                ),
            )
            for tech, distance in found
            if why_not(tech, need, calendars[tech.technician_id]) is None
        ]
        if ranked or len(found) < size:
            break
    if visit.preferred_technician_id and visit.preferred_technician_id not in seen:
        ranked += await _favourite(visits, techs, visit)
    return sorted(ranked, key=lambda r: r[2])


async def _favourite(
    visits: Visits, techs: Technicians, visit: Visit
) -> list[tuple[Technician, float, float]]:
    """The customer's favourite, even when further than the nearest page."""
    tech = await techs.get(str(visit.preferred_technician_id))
    if tech is None or tech.technician_id in visit.passed_over:
        return []
    need = visit.need()
    calendar = await visits.commitments(
        [tech.technician_id], need.start, need.end, besides=visit.visit_id
    )
    if why_not(tech, need, calendar[tech.technician_id]) is not None:
        return []
    distance = need.location.distance_m(tech.location)
    load = await visits.given_on_day([tech.technician_id], day_start(need.start))
    return [(tech, distance, cost_km(distance, tech.rating, load[tech.technician_id], True))]


async def run_round(ctx: TimerContext, region: str) -> None:
    """Match every visit waiting in `region` together (minimum total cost), then offer.

    A visit whose candidates all went to others this round waits for the next
    round (their calendars may still have room); a visit nobody can do, or whose
    search time ran out, fails and operations are told.
    """
    visits, techs = Visits(ctx.db), Technicians(ctx.db)
    waiting = await visits.waiting(region, ROUND_SIZE)
    if not waiting:
        return
    started = time.perf_counter()
    now = utcnow()
    gate = asyncio.Semaphore(ROUND_CONCURRENCY)
    # Many bookings at once share their nearest technicians: give the assignment wider
    # lists, so it can serve everyone in this round instead of leaving the hardest
    # bookings to later rounds with only far technicians left.
    decoded: dict[str, Technician] = {}
    first_page = min(CANDIDATES_PER_VISIT * max(1, len(waiting) // WIDEN_EVERY), MAX_FIRST_PAGE)

    async def row_of(visit: Visit) -> dict[str, float]:
        if now >= visit.search_deadline:
            return {}
        async with gate:
            ranked = await ranked_candidates(
                visits, techs, visit, first_page=first_page, decoded=decoded
            )
        return {t.technician_id: c for t, _, c in ranked}

    rows = list(await asyncio.gather(*(row_of(v) for v in waiting)))
    chosen = match_optimal(rows)

    async def settle(visit: Visit, row: dict[str, float], tech_id: str | None) -> str:
        """Offer, wait, or fail the visit: "offered", "again" (next round), "later"
        (everyone who could go is busy: try again when some may be free) or "failed"."""
        async with gate:  # one technician per visit: these transactions do not collide
            if tech_id is not None:
                made = await ctx.uow.run(partial(make_offer, seen=visit, technician_id=tech_id))
                return "offered" if made else "again"
            if row:
                return "again"  # qualified technicians exist, all taken this round
            if now < visit.search_deadline and await busy_but_able(techs, visit):
                return "later"
            reason = (
                "search time ran out"
                if now >= visit.search_deadline
                else "no qualified technician free for this window"
            )
            await ctx.uow.run(partial(fail_if_waiting, seen=visit, reason=reason))
            return "failed"

    outcomes = Counter(
        await asyncio.gather(
            *(settle(v, r, t) for v, r, t in zip(waiting, rows, chosen, strict=True))
        )
    )
    if outcomes["again"] or len(waiting) >= ROUND_SIZE:
        # Some wait for the next round; or more were waiting than one round reads (this
        # firing answered their requests too, so nothing else would bring them back).
        await ctx.uow.run(lambda tx: request_round(tx, region))
    elif outcomes["later"]:
        await ctx.uow.run(lambda tx: request_round(tx, region, after_s=tx.settings.busy_retry_s))
    log.info(
        "round in %s: %d waiting, %d offered, %d failed, %d wait again, %d wait for the busy"
        " (%.0f ms)",
        region,
        len(waiting),
        outcomes["offered"],
        outcomes["failed"],
        outcomes["again"],
        outcomes["later"],
        (time.perf_counter() - started) * 1000,
    )


async def busy_but_able(techs: Technicians, visit: Visit) -> bool:
    """Someone who has not turned this visit down could go, but their time is taken: the
    booking waits for them (a rush hour) instead of failing at once."""
    need = visit.need()
    found = await techs.candidates(
        need, exclude=visit.passed_over, limit=CANDIDATES_PER_VISIT, busy_too=True
    )
    return any(
        unqualified(tech, need) is None and tech.on_shift(need.start, need.end) for tech, _ in found
    )


async def fail_if_waiting(tx: Transaction, seen: Visit, reason: str) -> None:
    visit = await load(tx, seen.booking_id)
    if visit.status is VisitStatus.SEARCHING and visit.version == seen.version:
        fail(tx, visit, reason)
        await save(tx, visit)


async def make_offer(tx: Transaction, seen: Visit, technician_id: str) -> bool:
    """Hold the technician's time and offer them the visit; False if the world moved on."""
    visit = await load(tx, seen.booking_id)
    if visit.status is not VisitStatus.SEARCHING or visit.version != seen.version:
        return True  # changed since the round read it (cancelled, answered): nothing to do
    techs = Technicians(tx.db)
    tech = await techs.get(technician_id, tx.session)
    if tech is None:
        return False
    need = visit.need()
    calendar = await Visits(tx.db).commitments(
        [technician_id], need.start, need.end, besides=visit.visit_id, session=tx.session
    )
    reason = why_not(tech, need, calendar[technician_id])
    if reason is not None or not await techs.reserve(
        technician_id, tech.schedule_version, tx.session
    ):
        log.info(
            "offer to %s for %s not made: %s",
            technician_id,
            visit.booking_id,
            reason or "calendar changed concurrently",
        )
        return False
    offer = visit.offer(technician_id, utcnow(), timedelta(seconds=tx.settings.offer_timeout_s))
    await save(tx, visit)
    await set_timer(tx, OFFER_DEADLINE, offer.offer_id, offer.deadline)
    tx.emit(
        OfferMade(
            booking_id=visit.booking_id,
            visit_id=visit.visit_id,
            offer_id=offer.offer_id,
            technician_id=technician_id,
            window_start=visit.window_start,
            window_end=visit.window_end,
            deadline=offer.deadline,
        ),
        correlation_id=visit.booking_id,
    )
    return True


# -------------------------------------------------------------------- offers --
async def accept_offer(tx: Transaction, offer_id: str, technician_id: str) -> Visit:
    visits = Visits(tx.db)
    visit = await visits.by_offer(offer_id, tx.session)
    if visit is None:
        raise NotFound(f"offer {offer_id} does not exist")
    visit.answerable(offer_id, technician_id, utcnow())  # theirs, open, in time
    tech = await Technicians(tx.db).get(technician_id, tx.session)
    if tech is None:
        raise NotFound(f"technician {technician_id} does not exist")
    previous, reason = visit.previous, visit.failure or "technician changed"
    visit.accept(offer_id, tech, utcnow())
    visit.previous, visit.failure = None, None
    await issue_code(tx, visit)
    await save(tx, visit)
    await cancel(tx.db, tx.session, OFFER_DEADLINE, offer_id)
    announce(tx, visit, previous, reason)
    await watch_arrival(tx, visit, tech)
    return visit


async def watch_arrival(tx: Transaction, visit: Visit, tech: Technician) -> None:
    """Whoever is assigned now: if nobody has checked in by the latest arrival that still
    ends the visit within its window (or, assigned late, by when they could be there), with
    some grace, operations hear of it."""
    grace = timedelta(seconds=tx.settings.late_grace_s)
    due = visit.late_check_at(grace, utcnow(), travel_time(tech.location, visit.location))
    await set_timer(tx, ARRIVAL_DUE, visit.booking_id, due)


async def check_arrival(tx: Transaction, booking_id: str) -> None:
    """The visit should have begun: a warning for operations (the customer is told, and may
    cancel free) when its technician has not checked in. A window moved later waits again."""
    visit = await Visits(tx.db).by_booking(booking_id, tx.session)
    if visit is None or visit.status not in (VisitStatus.ASSIGNED, VisitStatus.EN_ROUTE):
        return  # arrived, or no longer theirs to come to
    now = utcnow()
    earliest = visit.arrive_by + timedelta(seconds=tx.settings.late_grace_s)
    if now < earliest:  # the window moved later since
        await set_timer(tx, ARRIVAL_DUE, booking_id, earliest)
        return
    tech = visit.technician
    if not visit.late(now, earliest) or tech is None:
        return  # told already for this assignment and window
    visit.late_for = visit.assignment
    visit.alerts.append(AlertKind.TECHNICIAN_LATE)
    await save(tx, visit)
    where = "is on the way" if visit.status is VisitStatus.EN_ROUTE else "has not set off"
    detail = (
        f"{tech.name} (badge {tech.badge_number}) has not checked in and {where}; the visit "
        f"should have begun by {visit.arrive_by.isoformat(timespec='minutes')}"
    )
    await alert(tx, visit, AlertKind.TECHNICIAN_LATE, detail, critical=False)


async def decline_offer(tx: Transaction, offer_id: str, technician_id: str) -> Visit:
    visit = await Visits(tx.db).by_offer(offer_id, tx.session)
    if visit is None:
        raise NotFound(f"offer {offer_id} does not exist")
    visit.decline(offer_id, technician_id, utcnow())
    await save(tx, visit)
    await cancel(tx.db, tx.session, OFFER_DEADLINE, offer_id)
    tx.emit(
        OfferDeclined(booking_id=visit.booking_id, offer_id=offer_id, technician_id=technician_id),
        correlation_id=visit.booking_id,
    )
    await request_round(tx, visit.region, at_once=True)
    return visit


async def expire_offer(tx: Transaction, offer_id: str) -> None:
    visit = await Visits(tx.db).by_offer(offer_id, tx.session)
    if visit is None:
        return
    offer = visit.expire(offer_id, utcnow())
    if offer is None:
        return  # answered in time after all
    await save(tx, visit)
    tx.emit(
        OfferExpired(
            booking_id=visit.booking_id, offer_id=offer_id, technician_id=offer.technician_id
        ),
        correlation_id=visit.booking_id,
    )
    await request_round(tx, visit.region, at_once=True)


# -------------------------------------------------------------- reassignment --
async def replace_technician(tx: Transaction, booking_id: str, reason: str) -> Visit:
    """Search again for this visit (the technician dropped out, operations moved it, or
    operations send a visit nobody could be found for back to matching)."""
    visit = await load(tx, booking_id)
    failed = visit.status is VisitStatus.FAILED
    if failed and utcnow() >= visit.window_end:
        raise Conflict(
            f"the window of visit {visit.visit_id} has passed: reschedule the booking, or "
            "assign a technician by hand"
        )
    await _search_again(tx, visit, reason)
    if failed:
        tx.emit(SearchResumed(booking_id=visit.booking_id, visit_id=visit.visit_id, reason=reason))
    return visit


async def _search_again(tx: Transaction, visit: Visit, reason: str) -> None:
    open_offer = visit.open_offer
    replace(tx, visit, reason)
    await save(tx, visit)
    if open_offer is not None:
        await cancel(tx.db, tx.session, OFFER_DEADLINE, open_offer.offer_id)
    await request_round(tx, visit.region, at_once=True)


async def stand_down(tx: Transaction, technician_id: str, *, besides: str | None = None) -> None:
    """A suspended technician leaves every visit not yet begun (their open offers too),
    `besides` the one being changed by the caller: each is searched for again, and those
    they had accepted are taken from them at once. A visit at the door or under way is
    operations' to handle."""
    for visit in await Visits(tx.db).for_technician(technician_id, set(REPLACEABLE), tx.session):
        if visit.visit_id != besides:
            await _search_again(tx, visit, "the technician was suspended")


async def recheck_held(tx: Transaction, technician_id: str) -> list[str]:
    """Their file changed: each visit offered to them or accepted, not set off for and not
    over, that they may no longer do (a certificate or insurance lapsed by its day, a skill
    or an area gone, off shift or on leave then, another store's now) is searched for again
    at once, the customer told; the bookings. Not their fault: a file put right lets them be
    asked again. (Read in the transaction that writes the file: an offer accepted at the
    same moment conflicts with it, and one of the two runs again and sees the other.)"""
    tech = await Technicians(tx.db).get(technician_id, tx.session)
    if tech is None:
        return []
    held = await Visits(tx.db).for_technician(
        technician_id, set(RECHECKED | DOOR_SHOWN), tx.session, ending_after=utcnow()
    )
    moved = []
    for visit in held:
        if visit.status not in RECHECKED:  # on the way or at the door: theirs to finish
            await _tell_new_details(tx, visit, tech)
            continue
        need = visit.need()
        reason = unqualified(tech, need)
        if reason is None and not tech.on_shift(need.start, need.end):
            reason = "not on shift for the whole window"
        if reason is None:
            await _tell_new_details(tx, visit, tech)
            continue
        open_offer = visit.open_offer
        replace(tx, visit, f"the technician's file changed: {reason}")
        visit.passed_over = [t for t in visit.passed_over if t != technician_id]
        await save(tx, visit)
        if open_offer is not None:
            await cancel(tx.db, tx.session, OFFER_DEADLINE, open_offer.offer_id)
        await request_round(tx, visit.region, at_once=True)
        moved.append(visit.booking_id)
    return moved


# A file changed: the visits re-checked against it (not set off for), and those whose
# customer is shown who comes (up to the door check).
RECHECKED = frozenset({VisitStatus.OFFERED, VisitStatus.ASSIGNED})
DOOR_SHOWN = frozenset({VisitStatus.ASSIGNED, VisitStatus.EN_ROUTE, VisitStatus.ARRIVED})


async def _tell_new_details(tx: Transaction, visit: Visit, tech: Technician) -> None:
    """A visit they keep shows the customer what they check at the door as it is now (a new
    work card, name or photo; certificates, store, phone): told at once."""
    now, shown = tech.identity(), visit.technician
    if visit.status not in DOOR_SHOWN or shown is None:
        return
    if shown.model_dump(exclude={"rating"}) == now.model_dump(exclude={"rating"}):
        return
    visit.technician = now
    await save(tx, visit)
    tx.emit(
        TechnicianDetailsChanged(
            booking_id=visit.booking_id,
            visit_id=visit.visit_id,
            previous_badge_number=shown.badge_number,
            **coming(now),
        )
    )


async def assign_by_hand(
    tx: Transaction, booking_id: str, technician_id: str, reason: str
) -> Visit:
    """Operations pick the technician: every rule still applies, no offer round."""
    visit = await load(tx, booking_id)
    techs = Technicians(tx.db)
    tech = await techs.get(technician_id, tx.session)
    if tech is None:
        raise NotFound(f"technician {technician_id} does not exist", field="technician_id")
    need = visit.need()
    calendar = await Visits(tx.db).commitments(
        [technician_id], need.start, need.end, besides=visit.visit_id, session=tx.session
    )
    refused = why_not(tech, need, calendar[technician_id])
    if refused is not None:
        raise Conflict(f"{technician_id} cannot take this visit: {refused}", field="technician_id")
    if not await techs.reserve(technician_id, tech.schedule_version, tx.session):
        raise Conflict(f"{technician_id}'s calendar changed meanwhile; retry")
    open_offer = visit.open_offer
    previous = visit.assign_by_hand(tech)
    await issue_code(tx, visit)
    await save(tx, visit)
    if open_offer is not None:
        await cancel(tx.db, tx.session, OFFER_DEADLINE, open_offer.offer_id)
    announce(tx, visit, previous, reason)
    await watch_arrival(tx, visit, tech)
    return visit


async def recheck_after_reschedule(tx: Transaction, visit: Visit) -> None:
    """The window moved: keep the technician if every rule still holds, else search again."""
    if visit.status not in HOLDS_TIME:
        if visit.status in {VisitStatus.SEARCHING, VisitStatus.FAILED}:
            visit.status = VisitStatus.SEARCHING
            visit.search_from(utcnow(), timedelta(seconds=tx.settings.search_timeout_s))
            await save(tx, visit)
            await request_round(tx, visit.region)
        return
    tech = await Technicians(tx.db).get(str(visit.technician_id), tx.session)
    need = visit.need()
    calendar = await Visits(tx.db).commitments(
        [str(visit.technician_id)], need.start, need.end, besides=visit.visit_id, session=tx.session
    )
    if (
        visit.status is VisitStatus.ASSIGNED
        and tech is not None
        and why_not(tech, need, calendar[tech.technician_id]) is None
        and await Technicians(tx.db).reserve(tech.technician_id, tech.schedule_version, tx.session)
    ):
        visit.late_for = None  # a new window: they may be late for it too
        await save(tx, visit)
        announce(
            tx, visit, None, "rescheduled"
        )  # the same technician, confirmed for the new window
        await watch_arrival(tx, visit, tech)
        return
    open_offer = visit.open_offer
    replace(tx, visit, "the technician cannot come in the new window")
    # Not the technician's fault: they may be asked again for a later window.
    visit.passed_over = [t for t in visit.passed_over if t != (tech.technician_id if tech else "")]
    await save(tx, visit)
    if open_offer is not None:
        await cancel(tx.db, tx.session, OFFER_DEADLINE, open_offer.offer_id)
    await request_round(tx, visit.region)
