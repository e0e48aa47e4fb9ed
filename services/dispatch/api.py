"""Dispatch's HTTP API: technicians' files, offers, and the visit at the door.

Every call carries the caller's identity (set by the gateway) and is checked
against the object: a store manages only its own technicians, a technician acts
only on visits and offers that are theirs, a customer only on their own visit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import Field
from pymongo.errors import DuplicateKeyError, WriteError

from services.dispatch import commands
from services.dispatch.domain import (
    ACCEPTED,
    AlertKind,
    CodeResult,
    Offer,
    OfferStatus,
    RaisedAlert,
    Technician,
    TechnicianFile,
    TechnicianIdentity,
    TechnicianStatus,
    Visit,
    VisitStatus,
    code_matches,
    visit_code,
)
from services.dispatch.storage import (
    STATUS_FIELDS,
    SafetyAlerts,
    Technicians,
    Visits,
    visit_code_key,
)
from shared.auth import Actor, ActorDep, Role
from shared.errors import Conflict, Forbidden, Locked, NotFound, Unprocessable
from shared.events.dispatch import (
    IdentityConfirmed,
    ServiceCompleted,
    ServiceStarted,
    TechnicianArrived,
    TechnicianEnRoute,
    TechnicianStatusChanged,
)
from shared.events.types import GeoPoint, PricedLine
from shared.mongo import bad_geometry
from shared.outbox import Transaction
from shared.schema import Forbid
from shared.service import RuntimeDep
from shared.time import Moment, utcnow

router = APIRouter()

Id = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


# ---------------------------------------------------------------- technicians --
def may_manage(actor: Actor, store_id: str) -> None:
    """Operations manage every file; a store only its own technicians'."""
    if not actor.speaks_for_store(store_id):
        raise Forbidden(f"only operations or store {store_id} may manage this technician")


def may_read_file(actor: Actor, tech: Technician) -> None:
    if actor.role is Role.TECHNICIAN and actor.subject == tech.technician_id:
        return
    may_manage(actor, tech.store_id)


async def existing(runtime: Any, technician_id: str) -> Technician:
    tech = await Technicians(runtime.db).get(technician_id)
    if tech is None:
        raise NotFound(f"technician {technician_id} does not exist")
    return tech


# What a file written again keeps: dispatch's own figures, and the status (changed by
# PUT /technicians/{id}/status alone).
KEPT = ("rating", "location_at", "schedule_version", *STATUS_FIELDS)


class FileWritten(Technician):
    """The file as written, and what it changed."""

    searched_again: list[str] = Field(
        default_factory=list,
        description="The bookings this file sent back to the search: visits the technician "
        "held and may no longer do (their customers are told)",
    )


@router.put(
    "/technicians/{technician_id}",
    tags=["technicians"],
    summary="Create or update a technician's personal file (operations, or their store); "
    "a visit they hold and may no longer do is searched for again at once",
)
async def put_technician(
    technician_id: Id, body: TechnicianFile, actor: ActorDep, runtime: RuntimeDep
) -> FileWritten:
    may_manage(actor, body.store_id)

    async def write(tx: Transaction) -> FileWritten:
        # Read in the transaction that writes it: what the file keeps (the rating, the
        # calendar's version) is written back as it is, not as it was a moment before.
        techs = Technicians(tx.db)
        before = await techs.get(technician_id, tx.session)
        if before is not None:
            may_manage(actor, before.store_id)  # a store cannot take over another's technician
            if "status" in body.model_fields_set and body.status is not before.status:
                raise Unprocessable(
                    f"status: the technician is {before.status.value}; suspend or reinstate "
                    f"with PUT /technicians/{technician_id}/status",
                    field="status",
                )
        kept = {k: getattr(before, k) for k in KEPT} if before else {}
        file = body.model_dump(exclude=set(kept))
        tech = Technician(technician_id=technician_id, **file, **kept)
        await techs.put(tech, before.store_id if before else body.store_id, tx.session)
        moved = await commands.recheck_held(tx, technician_id) if before is not None else []
        return FileWritten(**tech.model_dump(), searched_again=moved)

    try:
        return await runtime.uow.run(write)
    except DuplicateKeyError:
        raise Conflict(
            f"badge number {body.badge_number} belongs to another technician",
            field="badge_number",
        ) from None
    except WriteError as exc:
        if not bad_geometry(exc):
            raise
        raise Unprocessable(f"invalid area: {exc.details or exc}", field="areas") from exc


@router.get("/technicians/{technician_id}", tags=["technicians"], summary="A personal file")
async def get_technician(technician_id: Id, actor: ActorDep, runtime: RuntimeDep) -> Technician:
    tech = await existing(runtime, technician_id)
    may_read_file(actor, tech)
    return tech


@router.get("/technicians", tags=["technicians"], summary="A store's technicians")
async def list_technicians(
    actor: ActorDep,
    runtime: RuntimeDep,
    store_id: Annotated[str, Query(min_length=1, max_length=64)],
) -> list[Technician]:
    may_manage(actor, store_id)
    return await Technicians(runtime.db).of_store(store_id)


class StatusIn(Forbid):
    status: TechnicianStatus
    reason: str = Field(min_length=3, max_length=500)
    alert_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Operations reinstating a technician a safety alert suspended: lifted "
        "only if that alert is what keeps them off work now (409 otherwise).",
    )


@router.put(
    "/technicians/{technician_id}/status",
    tags=["technicians"],
    summary="Suspend or reactivate a technician (never dispatched while suspended)",
)
async def put_status(
    technician_id: Id, body: StatusIn, actor: ActorDep, runtime: RuntimeDep
) -> Technician:
    """The store suspends or reinstates its own technicians; a suspension a complaint made
    only operations lift. Said to everyone (`dispatch.technician_status_changed`)."""
    tech = await existing(runtime, technician_id)
    may_manage(actor, tech.store_id)
    if body.alert_id is not None:
        if not actor.is_ops:
            raise Forbidden("only operations reinstate a technician a safety alert suspended")
        if body.status is not TechnicianStatus.ACTIVE:
            raise Unprocessable(
                "alert_id: only with status active (it names the alert whose suspension is lifted)",
                field="alert_id",
            )

    async def change(tx: Transaction) -> None:
        techs = Technicians(tx.db)
        if body.alert_id is not None:
            if not await techs.lift_alert(technician_id, body.alert_id, tx.session):
                raise Conflict(still_held(await existing(runtime, technician_id), body.alert_id))
        elif not await techs.change_status(
            technician_id, body.status.value, tx.session, by_operations=actor.is_ops
        ):
            raise Forbidden(
                f"technician {technician_id} was suspended on a complaint or a safety alert: "
                "only operations change their status now"
            )
        tx.emit(
            TechnicianStatusChanged(
                technician_id=technician_id, status=body.status.value, reason=body.reason
            )
        )
        if body.status is TechnicianStatus.SUSPENDED:
            await commands.stand_down(tx, technician_id)

    await runtime.uow.run(change)
    return await existing(runtime, technician_id)


def still_held(tech: Technician, alert_id: str) -> str:
    """Why reinstating on `alert_id` was refused: the dashboard shows it as it is."""
    who = f"technician {tech.technician_id}"
    if tech.suspended_for_alert != alert_id:
        now = (
            f"suspended for another safety alert ({tech.suspended_for_alert})"
            if tech.suspended_for_alert
            else tech.status.value
        )
        return f"{who} is not suspended for safety alert {alert_id} (now: {now})"
    return (
        f"{who} is also suspended on complaint {tech.suspended_for_complaint}: "
        "reinstate without alert_id once that is looked into"
    )


class LocationIn(Forbid):
    location: GeoPoint
    at: Moment | None = None


@router.post(
    "/technicians/{technician_id}/location",
    tags=["technicians"],
    summary="The technician app reports where it is",
    status_code=204,
)
async def report_location(
    technician_id: Id, body: LocationIn, actor: ActorDep, runtime: RuntimeDep
) -> None:
    if not (actor.role is Role.TECHNICIAN and actor.subject == technician_id):
        raise Forbidden("only the technician's own app reports their location")
    if not await Technicians(runtime.db).move(
        technician_id, body.location.geojson(), body.at or utcnow()
    ):
        raise NotFound(f"technician {technician_id} does not exist")


AREA_DECIMALS = 2  # a point rounded to about a kilometre: the neighbourhood, not the door


def area_of(point: GeoPoint) -> GeoPoint:
    return GeoPoint(lat=round(point.lat, AREA_DECIMALS), lon=round(point.lon, AREA_DECIMALS))


DISTANCE_STEP_M = 100


def offered_distance(here: GeoPoint, place: GeoPoint) -> float:
    """How far the visit's area is, in steps of 100 m. Not the door's distance: the app
    reports wherever it likes, and three exact distances from three made-up places would
    pin the door down."""
    return round(here.distance_m(area_of(place)) / DISTANCE_STEP_M) * DISTANCE_STEP_M


class OfferView(Forbid):
    """What a technician decides on: the work, the window, how far it is and roughly where.
    The customer's door (and who they are) only once the visit is accepted: a technician
    declining offer after offer would otherwise collect homes."""

    booking_id: str
    offer: Offer
    window_start: datetime
    window_end: datetime
    area: GeoPoint = Field(description="the visit's place rounded to about a kilometre")
    distance_m: float | None = Field(
        description="to the visit's area, in steps of 100 m, from where the technician's app "
        "last reported them (None: not known)"
    )
    lines: list[PricedLine]


@router.get("/technicians/{technician_id}/offers", tags=["offers"], summary="Open offers to answer")
async def open_offers(technician_id: Id, actor: ActorDep, runtime: RuntimeDep) -> list[OfferView]:
    if not (actor.is_ops or (actor.role is Role.TECHNICIAN and actor.subject == technician_id)):
        raise Forbidden("a technician sees only their own offers")
    visits = await Visits(runtime.db).for_technician(technician_id, {VisitStatus.OFFERED})
    offered = [
        (v, offer)
        for v in visits
        if (offer := v.open_offer) is not None and offer.technician_id == technician_id
    ]
    tech = await Technicians(runtime.db).get(technician_id) if offered else None
    here = tech.location if tech is not None and tech.location_at is not None else None
    return [
        OfferView(
            booking_id=v.booking_id,
            offer=offer,
            window_start=v.window_start,
            window_end=v.window_end,
            area=area_of(v.location),
            distance_m=offered_distance(here, v.location) if here is not None else None,
            lines=v.lines,
        )
        for v, offer in offered
    ]


class JobView(Forbid):
    """A visit a technician has taken on and not yet finished: what their app lists."""

    booking_id: str
    status: VisitStatus
    window_start: datetime
    window_end: datetime
    location: GeoPoint
    lines: list[PricedLine]


@router.get(
    "/technicians/{technician_id}/visits",
    tags=["visits"],
    summary="The technician's accepted visits not yet completed (the app's job list)",
)
async def current_jobs(technician_id: Id, actor: ActorDep, runtime: RuntimeDep) -> list[JobView]:
    """An app that restarts, or missed a push, finds here what it has to do next."""
    if not (actor.is_ops or (actor.role is Role.TECHNICIAN and actor.subject == technician_id)):
        raise Forbidden("a technician sees only their own visits")
    visits = await Visits(runtime.db).for_technician(technician_id, set(ACCEPTED))
    return [
        JobView(
            booking_id=v.booking_id,
            status=v.status,
            window_start=v.window_start,
            window_end=v.window_end,
            location=v.location,
            lines=v.lines,
        )
        for v in visits
    ]


# --------------------------------------------------------------------- offers --
def technician_actor(actor: Actor) -> str:
    actor.require(Role.TECHNICIAN)
    return actor.subject


class VisitView(Forbid):
    """A visit as operations, the store and the assigned technician see it. Where the
    customer is (and who) only operations see always; the technician while the visit is
    theirs to do (accepted, not yet done), as booking shows the address; the store never."""

    visit_id: str
    booking_id: str
    customer_id: str | None
    status: VisitStatus
    location: GeoPoint | None
    window_start: datetime
    window_end: datetime
    lines: list[PricedLine]
    technician: TechnicianIdentity | None
    offers: list[Offer]
    arrived_at: datetime | None
    arrival_distance_m: float | None
    identity_confirmed_at: datetime | None
    identity_method: str | None
    started_at: datetime | None
    completed_at: datetime | None
    performed: list[PricedLine]
    voided_at: datetime | None = None  # the booking had been cancelled before completion
    alerts: list[AlertKind]
    failure: str | None
    version: int

    @classmethod
    def of(cls, visit: Visit, actor: Actor) -> VisitView:
        view = cls.model_validate(visit.model_dump(include=set(cls.model_fields)))
        if actor.is_ops:
            return view
        if not (actor.role is Role.TECHNICIAN and visit.status in ACCEPTED):
            # Offered only, or done: neither the door nor who lives there.
            view.location = None
            view.customer_id = None
        return view


class CustomerVisitView(Forbid):
    """What the customer sees: who is coming and where the visit stands."""

    booking_id: str
    status: VisitStatus
    window_start: datetime
    window_end: datetime
    technician: TechnicianIdentity | None
    arrived_at: datetime | None
    identity_confirmed_at: datetime | None

    @classmethod
    def of(cls, visit: Visit) -> CustomerVisitView:
        return cls.model_validate(visit.model_dump(include=set(cls.model_fields)))


@router.post("/offers/{offer_id}/accept", tags=["offers"], summary="Accept an offer")
async def accept(offer_id: Id, actor: ActorDep, runtime: RuntimeDep) -> VisitView:
    technician_id = technician_actor(actor)
    visit = await runtime.uow.run(lambda tx: commands.accept_offer(tx, offer_id, technician_id))
    return VisitView.of(visit, actor)


@router.post("/offers/{offer_id}/decline", tags=["offers"], summary="Decline an offer")
async def decline(offer_id: Id, actor: ActorDep, runtime: RuntimeDep) -> dict[str, str]:
    technician_id = technician_actor(actor)
    await runtime.uow.run(lambda tx: commands.decline_offer(tx, offer_id, technician_id))
    return {"offer_id": offer_id, "status": OfferStatus.DECLINED.value}


# --------------------------------------------------------------------- visits --
async def visible_visit(runtime: Any, booking_id: str, actor: Actor) -> Visit:
    visit = await Visits(runtime.db).by_booking(booking_id)
    if visit is None:
        raise NotFound(f"no visit for booking {booking_id}")
    if actor.is_ops:
        return visit
    if actor.role is Role.CUSTOMER and actor.subject == visit.customer_id:
        return visit
    if actor.role is Role.TECHNICIAN and actor.subject == visit.technician_id:
        return visit
    if actor.role is Role.STORE and visit.technician_id:
        tech = await Technicians(runtime.db).get(visit.technician_id)
        if tech is not None and tech.store_id == actor.store_id:
            return visit
    raise Forbidden(f"the visit for booking {booking_id} is not yours")


@router.get("/visits/{booking_id}", tags=["visits"], summary="The visit for a booking")
async def get_visit(
    booking_id: Id, actor: ActorDep, runtime: RuntimeDep
) -> VisitView | CustomerVisitView:
    visit = await visible_visit(runtime, booking_id, actor)
    if actor.role is Role.CUSTOMER:
        return CustomerVisitView.of(visit)
    return VisitView.of(visit, actor)


class DoorCheck(Forbid):
    """Shown only to the customer: who must be at the door, and the code to give them."""

    technician: TechnicianIdentity
    visit_code: str
    reminder: str


@router.get(
    "/visits/{booking_id}/door-check",
    tags=["visits"],
    summary="The customer's one-time visit code and the identity to check at the door",
)
async def door_check(booking_id: Id, actor: ActorDep, runtime: RuntimeDep) -> DoorCheck:
    visit = await visible_visit(runtime, booking_id, actor)
    if not (actor.role is Role.CUSTOMER and actor.subject == visit.customer_id):
        raise Forbidden("only the customer sees the visit code")
    waiting_at_door = {VisitStatus.ASSIGNED, VisitStatus.EN_ROUTE, VisitStatus.ARRIVED}
    if visit.status not in waiting_at_door or visit.technician is None:
        raise Conflict(f"no code to give: the visit is {visit.status}")
    key = await visit_code_key(runtime.db, runtime.settings)
    return DoorCheck(
        technician=visit.technician,
        visit_code=visit_code(key, visit.visit_id, visit.assignment),
        reminder=(
            f"Check the work card: {visit.technician.name}, badge "
            f"{visit.technician.badge_number}. Give the code only if both match."
        ),
    )


class Candidate(Forbid):
    technician: TechnicianIdentity
    distance_m: float
    cost: float


@router.get(
    "/visits/{booking_id}/candidates",
    tags=["visits"],
    summary="Who could do this visit now, best first (operations)",
)
async def candidates(booking_id: Id, actor: ActorDep, runtime: RuntimeDep) -> list[Candidate]:
    actor.require(Role.OPS)
    visit = await Visits(runtime.db).by_booking(booking_id)
    if visit is None:
        raise NotFound(f"no visit for booking {booking_id}")
    ranked = await commands.ranked_candidates(Visits(runtime.db), Technicians(runtime.db), visit)
    return [
        Candidate(technician=t.identity(), distance_m=round(d, 1), cost=round(c, 3))
        for t, d, c in ranked
    ]


async def step(runtime: Any, booking_id: str, work: Any) -> Visit:
    """Run one step of the visit in a unit of work; the visit as saved."""

    async def run(tx: Transaction) -> Visit:
        visit = await commands.load(tx, booking_id)
        await work(tx, visit)
        await commands.save(tx, visit)
        return visit

    visit: Visit = await runtime.uow.run(run)
    return visit


@router.post("/visits/{booking_id}/en-route", tags=["visits"], summary="Set off to the address")
async def en_route(booking_id: Id, actor: ActorDep, runtime: RuntimeDep) -> VisitView:
    technician_id = technician_actor(actor)

    async def work(tx: Transaction, visit: Visit) -> None:
        visit.set_off(technician_id)
        tx.emit(
            TechnicianEnRoute(
                booking_id=booking_id,
                visit_id=visit.visit_id,
                technician_id=technician_id,
                at=utcnow(),
            )
        )

    return VisitView.of(await step(runtime, booking_id, work), actor)


class ArriveIn(Forbid):
    location: GeoPoint = Field(description="Where the technician app says it is")


@router.post(
    "/visits/{booking_id}/arrive",
    tags=["visits"],
    summary="Check in at the address with the reported location",
)
async def arrive(booking_id: Id, body: ArriveIn, actor: ActorDep, runtime: RuntimeDep) -> VisitView:
    technician_id = technician_actor(actor)

    async def work(tx: Transaction, visit: Visit) -> None:
        now = utcnow()
        far = visit.arrive(technician_id, body.location, now, tx.settings.check_in_max_distance_m)
        distance = visit.arrival_distance_m or 0.0
        tx.emit(
            TechnicianArrived(
                booking_id=booking_id,
                visit_id=visit.visit_id,
                technician_id=technician_id,
                at=now,
                distance_m=distance,
                flagged=far,
            )
        )
        if far:
            await commands.alert(
                tx,
                visit,
                AlertKind.CHECK_IN_FAR,
                f"checked in {distance:.0f} m from the address "
                f"(more than {tx.settings.check_in_max_distance_m:.0f} m)",
                critical=False,
            )

    return VisitView.of(await step(runtime, booking_id, work), actor)


class CodeIn(Forbid):
    code: str = Field(pattern=r"^[0-9]{6}$", description="The six digits the customer gives")


@router.post(
    "/visits/{booking_id}/identity",
    tags=["visits"],
    summary="The technician enters the customer's visit code at the door",
)
async def enter_code(
    booking_id: Id, body: CodeIn, actor: ActorDep, runtime: RuntimeDep
) -> VisitView:
    technician_id = technician_actor(actor)
    key = await visit_code_key(runtime.db, runtime.settings)
    attempts = runtime.settings.visit_code_attempts
    outcome: list[CodeResult] = []

    async def work(tx: Transaction, visit: Visit) -> None:
        result = visit.enter_code(
            technician_id, code_matches(key, visit, body.code), utcnow(), attempts
        )
        outcome[:] = [result]
        if result is CodeResult.CONFIRMED:
            tx.emit(
                IdentityConfirmed(
                    booking_id=booking_id,
                    visit_id=visit.visit_id,
                    technician_id=technician_id,
                    at=visit.identity_confirmed_at or utcnow(),
                )
            )
        elif result is CodeResult.LOCKED:
            await commands.alert(
                tx,
                visit,
                AlertKind.WRONG_CODE_LOCKOUT,
                f"{attempts} wrong visit codes at the door; the visit is locked",
            )

    # A wrong code is saved (it counts) before the error is answered.
    visit = await step(runtime, booking_id, work)
    if outcome == [CodeResult.WRONG]:
        left = attempts - visit.code_attempts
        raise Unprocessable(
            f"wrong visit code; {left} attempt(s) left before the visit is locked", field="code"
        )
    if outcome == [CodeResult.LOCKED]:
        raise Locked("wrong visit code too many times: the visit is locked, operations alerted")
    return VisitView.of(visit, actor)


@router.post(
    "/visits/{booking_id}/identity/in-app",
    tags=["visits"],
    summary="The customer confirms in the app that name and badge match",
)
async def confirm_in_app(booking_id: Id, actor: ActorDep, runtime: RuntimeDep) -> CustomerVisitView:
    actor.require(Role.CUSTOMER)

    async def work(tx: Transaction, visit: Visit) -> None:
        visit.confirm_in_app(actor.subject, utcnow())
        tx.emit(
            IdentityConfirmed(
                booking_id=booking_id,
                visit_id=visit.visit_id,
                technician_id=str(visit.technician_id),
                at=visit.identity_confirmed_at or utcnow(),
            )
        )

    return CustomerVisitView.of(await step(runtime, booking_id, work))


@router.post(
    "/visits/{booking_id}/not-the-person",
    tags=["visits"],
    summary="The customer says the person at the door is not the one shown: halt, alert",
)
async def not_the_person(booking_id: Id, actor: ActorDep, runtime: RuntimeDep) -> CustomerVisitView:
    actor.require(Role.CUSTOMER)

    async def work(tx: Transaction, visit: Visit) -> None:
        visit.not_the_person(actor.subject)
        await commands.alert(
            tx, visit, AlertKind.NOT_THE_PERSON, "the customer says this is not the person shown"
        )

    return CustomerVisitView.of(await step(runtime, booking_id, work))


@router.post("/visits/{booking_id}/start", tags=["visits"], summary="Start the service")
async def start(booking_id: Id, actor: ActorDep, runtime: RuntimeDep) -> VisitView:
    technician_id = technician_actor(actor)

    async def work(tx: Transaction, visit: Visit) -> None:
        visit.start(technician_id, utcnow())
        tx.emit(
            ServiceStarted(
                booking_id=booking_id,
                visit_id=visit.visit_id,
                technician_id=technician_id,
                at=visit.started_at or utcnow(),
            )
        )

    return VisitView.of(await step(runtime, booking_id, work), actor)


class PerformedItem(Forbid):
    code: str = Field(min_length=1, max_length=64, description="A catalogue code on the booking")
    quantity: int = Field(ge=1, le=20)


class CompleteVisit(Forbid):
    performed: list[PerformedItem] = Field(min_length=1, max_length=20)


@router.post(
    "/visits/{booking_id}/complete",
    tags=["visits"],
    summary="Record the items performed and products used; the receipt follows",
)
async def complete(
    booking_id: Id, body: CompleteVisit, actor: ActorDep, runtime: RuntimeDep
) -> VisitView:
    technician_id = technician_actor(actor)

    async def work(tx: Transaction, visit: Visit) -> None:
        done = visit.complete(
            technician_id, [(i.code, i.quantity) for i in body.performed], utcnow()
        )
        # The receipt belongs to the technician's store (its hash chain): from the file, not
        # from what the caller claims.
        tech = await Technicians(tx.db).get(technician_id, tx.session)
        if tech is None:
            raise NotFound(f"technician {technician_id} has no file")
        tx.emit(
            ServiceCompleted(
                booking_id=booking_id,
                visit_id=visit.visit_id,
                customer_id=visit.customer_id,
                technician_id=technician_id,
                store_id=tech.store_id,
                region=visit.region,
                completed_at=visit.completed_at or utcnow(),
                lines=done,
            )
        )

    return VisitView.of(await step(runtime, booking_id, work), actor)


class DropIn(Forbid):
    reason: str = Field(min_length=3, max_length=500)


@router.post(
    "/visits/{booking_id}/drop",
    tags=["visits"],
    summary="The assigned technician cannot come: another one is found",
)
async def drop(booking_id: Id, body: DropIn, actor: ActorDep, runtime: RuntimeDep) -> VisitView:
    technician_id = technician_actor(actor)

    async def work(tx: Transaction) -> Visit:
        visit = await commands.load(tx, booking_id)
        if visit.technician_id != technician_id or visit.status is VisitStatus.OFFERED:
            raise Forbidden(f"the visit for booking {booking_id} is not assigned to you")
        return await commands.replace_technician(tx, booking_id, body.reason)

    return VisitView.of(await runtime.uow.run(work), actor)


class ReassignIn(Forbid):
    reason: str = Field(min_length=3, max_length=500)
    technician_id: str | None = Field(
        default=None, max_length=64, description="Assign this technician now; omit to search again"
    )


@router.post(
    "/visits/{booking_id}/reassign",
    tags=["visits"],
    summary="Operations move the visit to another technician, or send it back to matching",
)
async def reassign(
    booking_id: Id, body: ReassignIn, actor: ActorDep, runtime: RuntimeDep
) -> VisitView:
    actor.require(Role.OPS)

    async def work(tx: Transaction) -> Visit:
        if body.technician_id:
            return await commands.assign_by_hand(tx, booking_id, body.technician_id, body.reason)
        return await commands.replace_technician(tx, booking_id, body.reason)

    return VisitView.of(await runtime.uow.run(work), actor)


# -------------------------------------------------------------- safety alerts --
@router.get(
    "/safety-alerts",
    tags=["safety"],
    summary="Safety alerts, newest first (operations; a store sees its technicians' alerts)",
)
async def list_alerts(
    actor: ActorDep,
    runtime: RuntimeDep,
    open_only: Annotated[bool, Query(description="Only those nobody acknowledged yet")] = True,
    store_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[RaisedAlert]:
    query: dict[str, object] = {**actor.store_scope(store_id, what="the safety alerts list")}
    if open_only:
        query["acknowledged_at"] = None
    found = await SafetyAlerts(runtime.db).find(query, sort=[("raised_at", -1)], limit=limit)
    return [alert.seen_by(actor.is_ops) for alert in found]


class AcknowledgeIn(Forbid):
    note: str = Field(
        min_length=3, max_length=500, description="What is being done: who was called, what next"
    )


@router.post(
    "/safety-alerts/{alert_id}/acknowledge",
    tags=["safety"],
    summary="Operations take the alert: recorded with who, when and what is being done",
)
async def acknowledge_alert(
    alert_id: Id, body: AcknowledgeIn, actor: ActorDep, runtime: RuntimeDep
) -> RaisedAlert:
    actor.require(Role.OPS)
    raised: RaisedAlert = await runtime.uow.run(
        lambda tx: commands.acknowledge_alert(tx, alert_id, f"ops:{actor.subject}", body.note)
    )
    return raised


# ------------------------------------------------------------- on shift now --
class OnShift(Forbid):
    """A technician on shift now, where they last reported from, and what they are doing."""

    technician: TechnicianIdentity
    status: TechnicianStatus
    location: GeoPoint
    location_at: datetime | None
    booking_id: str | None = Field(description="The visit they are on or heading to")
    stage: VisitStatus | None = None


@router.get(
    "/shifts/now",
    tags=["technicians"],
    summary="Technicians on shift now with their last location (operations; a store its own)",
)
async def on_shift_now(
    actor: ActorDep,
    runtime: RuntimeDep,
    store_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=2000)] = 500,
) -> list[OnShift]:
    scope = actor.store_scope(store_id, what="who is on shift").get("store_id")
    now = utcnow()
    working = [
        t
        for t in await Technicians(runtime.db).of_store(scope, limit=limit)
        if t.on_shift(now, now)
    ]
    busy = await Visits(runtime.db).under_way([t.technician_id for t in working])
    return [
        OnShift(
            technician=t.identity(),
            status=t.status,
            location=t.location,
            location_at=t.location_at,
            booking_id=busy[t.technician_id].booking_id if t.technician_id in busy else None,
            stage=busy[t.technician_id].status if t.technician_id in busy else None,
        )
        for t in working
    ]
