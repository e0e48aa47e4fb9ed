"""Reviews' HTTP API: reviews, technician quality, complaints.

Who may do what: a customer reviews and complains about their own bookings and
answers their own complaints; operations open complaints for a caller, work
them and may close them; a store reads its own technicians' complaints.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import Field, field_validator, model_validator
from pymongo.errors import DuplicateKeyError

from services.reviews import commands
from services.reviews.domain import (
    Category,
    Channel,
    Complaint,
    ComplaintStatus,
    Kpis,
    RemedyIn,
    RemedyKind,
    Review,
    ReviewRequest,
    ReviewRequestStatus,
    Severity,
    Tier,
    bayesian_rating,
    keyed_complaint_id,
    kpis,
    open_complaint,
    sla,
)
from services.reviews.storage import (
    MADE_TWICE_UNDEALT,
    BookingFacts,
    Bookings,
    Complaints,
    ReviewRequests,
    Reviews,
)
from shared.auth import Actor, ActorDep, Role
from shared.errors import Conflict, Forbidden, NotFound, Unprocessable
from shared.events.reviews import ReviewSubmitted
from shared.outbox import Transaction
from shared.schema import Forbid, PathId, idempotency_key
from shared.service import RuntimeDep
from shared.time import Moment, utcnow

router = APIRouter()

Text = Annotated[str, Field(min_length=1, max_length=2000)]
Tag = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[a-z0-9_-]+$")]


@router.get(
    "/review-requests/{booking_id}", tags=["reviews"], summary="The review invitation of a booking"
)
async def get_review_request(
    booking_id: PathId, runtime: RuntimeDep, actor: ActorDep
) -> ReviewRequest:
    request = await ReviewRequests(runtime.db).get(booking_id)
    if request is None:
        raise NotFound(f"no review request for booking {booking_id} yet")
    if not (actor.is_ops or (actor.role is Role.CUSTOMER and actor.subject == request.customer_id)):
        raise Forbidden("a review invitation is for operations and the customer it invites")
    return request


# -------------------------------------------------------------------- reviews --


class ReviewIn(Forbid):
    booking_id: str = Field(min_length=1, max_length=64)
    rating: int = Field(ge=1, le=5)
    tags: list[Tag] = Field(default_factory=list, max_length=10)
    text: str = Field(default="", max_length=2000)


class ReviewEdit(Forbid):
    rating: int | None = Field(default=None, ge=1, le=5)
    tags: list[Tag] | None = Field(default=None, max_length=10)
    text: str | None = Field(default=None, max_length=2000)


async def _booking_of_customer(runtime: RuntimeDep, actor: Actor, booking_id: str) -> BookingFacts:
    booking = await Bookings(runtime.db).get(booking_id)
    if booking is None or booking.customer_id is None:
        raise NotFound(f"booking {booking_id} is not known here", field="booking_id")
    if not (actor.is_ops or (actor.role is Role.CUSTOMER and actor.subject == booking.customer_id)):
        raise Forbidden("only the booking's customer")
    return booking


@router.post("/reviews", tags=["reviews"], status_code=201, summary="Rate a completed visit")
async def post_review(body: ReviewIn, runtime: RuntimeDep, actor: ActorDep) -> Review:
    actor.require(Role.CUSTOMER)
    booking = await _booking_of_customer(runtime, actor, body.booking_id)
    if booking.completed_at is None or booking.technician_id is None:
        raise Conflict("a visit is reviewed after it is completed", field="booking_id")
    technician_id = booking.technician_id

    async def work(tx: Transaction) -> Review:
        reviews = Reviews(tx.db)
        if await reviews.get(body.booking_id, tx.session) is not None:
            raise Conflict("this visit is reviewed already; change the review instead")
        # Read in the transaction: a voiding at this moment also writes the invitation below,
        # so the two conflict and the one retried sees the other.
        now_known = await Bookings(tx.db).get(body.booking_id, tx.session)
        if now_known is not None and now_known.voided_at is not None:
            raise Conflict(
                "the booking was cancelled before its visit was completed: there is no visit "
                "to rate",
                field="booking_id",
            )
        now = utcnow()
        review = Review(
            booking_id=body.booking_id,
            customer_id=actor.subject,
            technician_id=technician_id,
            store_id=booking.store_id,
            rating=body.rating,
            tags=body.tags,
            text=body.text,
            created_at=now,
            updated_at=now,
        )
        await reviews.insert(review, tx.session)
        request = await ReviewRequests(tx.db).get(body.booking_id, tx.session)
        if request is not None:
            request.status = ReviewRequestStatus.REVIEWED
            await ReviewRequests(tx.db).save(request, tx.session)
        _submitted(tx, review, edited=False)
        await commands.publish_quality(tx, technician_id)
        return review

    return await runtime.uow.run(work)


def _submitted(tx: Transaction, review: Review, *, edited: bool) -> None:
    tx.emit(
        ReviewSubmitted(
            booking_id=review.booking_id,
            customer_id=review.customer_id,
            technician_id=review.technician_id,
            rating=review.rating,
            tags=review.tags,
            edited=edited,
        )
    )


@router.put("/reviews/{booking_id}", tags=["reviews"], summary="Correct a review within a day")
async def edit_review(
    booking_id: PathId, body: ReviewEdit, runtime: RuntimeDep, actor: ActorDep
) -> Review:
    actor.require(Role.CUSTOMER)

    async def work(tx: Transaction) -> Review:
        review = await Reviews(tx.db).get(booking_id, tx.session)
        if review is None:
            raise NotFound(f"no review of booking {booking_id}")
        review.edit(actor.subject, utcnow(), **body.model_dump(exclude_none=True))
        await Reviews(tx.db).save(review, tx.session)
        _submitted(tx, review, edited=True)
        await commands.publish_quality(tx, review.technician_id)
        return review

    return await runtime.uow.run(work)


@router.get("/reviews/{booking_id}", tags=["reviews"], summary="The review of a booking")
async def get_review(booking_id: PathId, runtime: RuntimeDep, actor: ActorDep) -> Review:
    review = await Reviews(runtime.db).get(booking_id)
    if review is None:
        raise NotFound(f"no review of booking {booking_id}")
    allowed = (
        actor.is_ops
        or (actor.role is Role.CUSTOMER and actor.subject == review.customer_id)
        or (actor.role is Role.TECHNICIAN and actor.subject == review.technician_id)
        or (actor.role is Role.STORE and actor.store_id == review.store_id)
    )
    if not allowed:
        raise Forbidden("this review is not yours to read")
    if actor.role in (Role.TECHNICIAN, Role.STORE):
        # Not who wrote it: a complaint about the same visit does not name them either.
        return review.model_copy(update={"customer_id": ""})
    return review


class Quality(Forbid):
    technician_id: str
    rating: float
    reviews: int
    complaints: int | None = Field(
        description="Part of the technician's file: for operations and the technician all of "
        "them, for a store those on the visits it sent (null for anyone else)"
    )


@router.get(
    "/technicians/{technician_id}/quality",
    tags=["reviews"],
    summary="A technician's Bayesian rating and complaint count",
)
async def quality(technician_id: PathId, runtime: RuntimeDep, actor: ActorDep) -> Quality:
    ratings = await Reviews(runtime.db).ratings_of(technician_id)
    complaints: int | None = None
    if actor.is_ops or (actor.role is Role.TECHNICIAN and actor.subject == technician_id):
        complaints = await Complaints(runtime.db).count_against(technician_id)
    elif (
        actor.role is Role.STORE
        and actor.store_id
        and await Bookings(runtime.db).sent_by(technician_id, actor.store_id)
    ):
        # The complaints about the visits it sent, as its complaints list shows: a
        # technician who moves to another store takes the rest of their file with them.
        complaints = await Complaints(runtime.db).count_against(
            technician_id, store_id=actor.store_id
        )
    return Quality(
        technician_id=technician_id,
        rating=bayesian_rating(ratings),
        reviews=len(ratings),
        complaints=complaints,
    )


# ----------------------------------------------------------------- complaints --


class ComplaintIn(Forbid):
    booking_id: str = Field(min_length=1, max_length=64)
    category: Category
    severity: Severity = Severity.MEDIUM
    description: Text


@router.post(
    "/complaints",
    tags=["complaints"],
    status_code=201,
    summary="A customer complains (app), or operations for them (phone)",
)
async def open_one(
    body: ComplaintIn,
    runtime: RuntimeDep,
    actor: ActorDep,
    response: Response,
    key: Annotated[str | None, idempotency_key("a second complaint")] = None,
) -> Complaint:
    actor.require(Role.CUSTOMER, Role.OPS)
    booking = await _booking_of_customer(runtime, actor, body.booking_id)
    assert booking.customer_id is not None
    complaint = open_complaint(
        # A retried filing (the app timed out, the gateway retried) names the same complaint.
        complaint_id=keyed_complaint_id(booking.customer_id, key) if key else None,
        booking_id=body.booking_id,
        customer_id=booking.customer_id,
        technician_id=booking.technician_id,
        store_id=booking.store_id,
        category=body.category,
        severity=body.severity,
        description=body.description,
        channel=Channel.PHONE if actor.is_ops else Channel.APP,
        by=f"{actor.role.value}:{actor.subject}",
        at=utcnow(),
    )
    try:
        filed = await runtime.uow.run(lambda tx: commands.opened(tx, complaint))
    except DuplicateKeyError:  # the same filing, committed meanwhile: now it is found
        filed = await runtime.uow.run(lambda tx: commands.opened(tx, complaint))
    if filed is not complaint:  # filed before under this key
        same = (filed.booking_id, filed.category, filed.severity, filed.description)
        if same != (body.booking_id, body.category, body.severity, body.description):
            raise Conflict(
                "this Idempotency-Key was already used for a different complaint",
                field="Idempotency-Key",
            )
        response.status_code = 200
    return shown(actor, filed)


def shown(actor: Actor, complaint: Complaint) -> Complaint:
    """The complaint as this reader may see it (operations: all of it)."""
    return (
        complaint if actor.is_ops else complaint.as_seen_by_outsider(store=actor.role is Role.STORE)
    )


def may_read(actor: Actor, complaint: Complaint) -> bool:
    return (
        actor.is_ops
        or (actor.role is Role.CUSTOMER and actor.subject == complaint.customer_id)
        or (actor.role is Role.STORE and actor.store_id == complaint.store_id)
    )


@router.get(
    "/complaints/{complaint_id}", tags=["complaints"], summary="A complaint and its timeline"
)
async def get_one(complaint_id: PathId, runtime: RuntimeDep, actor: ActorDep) -> Complaint:
    complaint = await Complaints(runtime.db).get(complaint_id)
    if complaint is None:
        raise NotFound(f"complaint {complaint_id} does not exist")
    if not may_read(actor, complaint):
        raise Forbidden("this complaint is not yours to read")
    return shown(actor, complaint)


@router.get("/complaints", tags=["complaints"], summary="Complaints to work (operations)")
async def list_complaints(
    runtime: RuntimeDep,
    actor: ActorDep,
    *,
    status: ComplaintStatus | None = None,
    tier: Tier | None = None,
    booking_id: Annotated[str | None, Query(max_length=64)] = None,
    made_twice: Annotated[
        bool,
        Query(
            description="Only those with a remedy made after another resolution answered it, "
            "not yet dealt with (operations' queue)"
        ),
    ] = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[Complaint]:
    query: dict[str, object] = {}
    if actor.role is Role.STORE:
        query["store_id"] = actor.store_id
    elif actor.role is Role.CUSTOMER:
        query["customer_id"] = actor.subject
    elif not actor.is_ops:
        raise Forbidden("complaints are read by customers, their stores and operations")
    if status:
        query["status"] = status.value
    if tier:
        query["tier"] = tier.value
    if booking_id:
        query["booking_id"] = booking_id
    if made_twice:
        actor.require(Role.OPS)  # a store or customer sees each remedy on the complaint
        query.update(MADE_TWICE_UNDEALT)
    found = await Complaints(runtime.db).find(query, sort=[("opened_at", -1)], limit=limit)
    return [shown(actor, c) for c in found]


class TextIn(Forbid):
    text: Text


class AssignIn(Forbid):
    owner: str = Field(min_length=1, max_length=64)


class ResolutionIn(Forbid):
    text: Text
    remedies: list[RemedyIn] = Field(min_length=1, max_length=6)

    @field_validator("remedies")
    @classmethod
    def some_remedies_once(cls, remedies: list[RemedyIn]) -> list[RemedyIn]:
        # Two refunds (or coupons, or redo visits) in one resolution is a slip, not a remedy:
        # each would be carried out.
        for once in RemedyKind:
            if sum(r.kind is once for r in remedies) > 1:
                raise ValueError(f"a resolution names {once.value} once at most")
        return remedies

    @model_validator(mode="after")
    def remedies_are_complete(self) -> ResolutionIn:
        for r in self.remedies:
            if r.kind is RemedyKind.COUPON:
                if (r.amount is None) == (r.percent is None):
                    raise ValueError("a coupon is either an amount or a percent")
                if r.amount == 0:
                    raise ValueError("a coupon of an amount is a positive amount")
                if r.currency is None:
                    raise ValueError("a coupon names its currency")
            elif r.kind is RemedyKind.REFUND:
                # Payments refunds an amount or all that was paid, in the receipt's currency:
                # a percent or another currency would be refunded as everything paid.
                if r.amount == 0:
                    raise ValueError("a refund is a positive amount, or none for everything paid")
                if r.percent is not None or r.currency is not None:
                    raise ValueError(
                        "a refund is an amount in the visit's currency, or none for everything "
                        "paid: no percent, no currency"
                    )
            elif r.amount is not None or r.percent is not None or r.currency is not None:
                raise ValueError(f"{r.kind.value} takes no amount, percent or currency")
        return self


ANSWERED = Field(
    default=None,
    max_length=64,
    description="The resolution answered (its `resolution_id`, as read): if operations "
    "proposed another since, 409, and nothing changes. Needed when the waiting resolution "
    "took the place of another (409 without it: the one read may be the one replaced)",
)


class AcceptIn(Forbid):
    resolution_id: str | None = ANSWERED


class RejectIn(Forbid):
    reason: Text
    resolution_id: str | None = ANSWERED


async def _work(
    runtime: RuntimeDep, actor: Actor, complaint_id: str, change: commands.ComplaintChange
) -> Complaint:
    changed = await runtime.uow.run(lambda tx: commands.change(tx, complaint_id, change))
    return shown(actor, changed)


@router.post("/complaints/{complaint_id}/respond", tags=["complaints"], summary="First response")
async def respond(
    complaint_id: PathId, body: TextIn, runtime: RuntimeDep, actor: ActorDep
) -> Complaint:
    actor.require(Role.OPS)

    async def change(tx: Transaction, c: Complaint) -> None:
        c.respond(f"ops:{actor.subject}", body.text, utcnow())

    return await _work(runtime, actor, complaint_id, change)


@router.post("/complaints/{complaint_id}/assign", tags=["complaints"], summary="Give it an owner")
async def assign(
    complaint_id: PathId, body: AssignIn, runtime: RuntimeDep, actor: ActorDep
) -> Complaint:
    actor.require(Role.OPS)

    async def change(tx: Transaction, c: Complaint) -> None:
        c.assign(f"ops:{actor.subject}", body.owner, utcnow())

    return await _work(runtime, actor, complaint_id, change)


@router.post("/complaints/{complaint_id}/notes", tags=["complaints"], summary="An internal note")
async def note(
    complaint_id: PathId, body: TextIn, runtime: RuntimeDep, actor: ActorDep
) -> Complaint:
    actor.require(Role.OPS)

    async def change(tx: Transaction, c: Complaint) -> None:
        c.note(f"ops:{actor.subject}", body.text, utcnow())

    return await _work(runtime, actor, complaint_id, change)


class DealtWithIn(Forbid):
    how: str = Field(
        min_length=3,
        max_length=500,
        pattern=r"\S",
        description="What operations did: the customer keeps both, or gave one back (their "
        "words, never shown to the customer or the store)",
    )


@router.post(
    "/complaints/{complaint_id}/remedies/{remedy_id}/dealt-with",
    tags=["complaints"],
    summary="A remedy made after another resolution answered it, dealt with (operations)",
)
async def deal_with_twice(
    complaint_id: PathId, remedy_id: PathId, body: DealtWithIn, runtime: RuntimeDep, actor: ActorDep
) -> Complaint:
    actor.require(Role.OPS)

    async def change(tx: Transaction, c: Complaint) -> bool:
        return c.deal_with_twice(f"ops:{actor.subject}", remedy_id, body.how, utcnow())

    return await _work(runtime, actor, complaint_id, change)


@router.post(
    "/complaints/{complaint_id}/resolution",
    tags=["complaints"],
    summary="Propose a resolution; its remedies go to the services that carry them out",
)
async def resolve(
    complaint_id: PathId,
    body: ResolutionIn,
    runtime: RuntimeDep,
    actor: ActorDep,
    key: Annotated[str | None, idempotency_key("a second set of remedies")] = None,
) -> Complaint:
    actor.require(Role.OPS)

    async def change(tx: Transaction, c: Complaint) -> bool:
        if any(r.kind is RemedyKind.SUSPENSION for r in body.remedies) and not c.technician_id:
            raise Unprocessable("no technician to suspend on this booking", field="remedies")
        waiting = c.status is ComplaintStatus.RESOLUTION_PROPOSED
        replaces = c.resolution_id if waiting else None
        decided = c.propose(f"ops:{actor.subject}", body.text, body.remedies, utcnow(), key)
        if not decided:  # proposed before under this key, and told already
            return False
        commands.proposed(tx, c, decided, replaces)
        return True

    return await _work(runtime, actor, complaint_id, change)


def _customer_or_ops(actor: Actor, complaint: Complaint) -> str:
    if actor.is_ops:
        return f"ops:{actor.subject}"
    if actor.role is Role.CUSTOMER and actor.subject == complaint.customer_id:
        return f"customer:{actor.subject}"
    raise Forbidden("only the complaint's customer or operations may answer the resolution")


@router.post(
    "/complaints/{complaint_id}/accept",
    tags=["complaints"],
    summary="The customer (or operations for them) accepts the resolution: closed",
)
async def accept(
    complaint_id: PathId, runtime: RuntimeDep, actor: ActorDep, body: AcceptIn | None = None
) -> Complaint:
    answered = body.resolution_id if body else None

    async def change(tx: Transaction, c: Complaint) -> None:
        c.accept(_customer_or_ops(actor, c), utcnow(), answered)
        commands.closed(tx, c)

    return await _work(runtime, actor, complaint_id, change)


@router.post(
    "/complaints/{complaint_id}/reject",
    tags=["complaints"],
    summary="The customer rejects the resolution: reopened a tier up (the customer only)",
)
async def reject(
    complaint_id: PathId,
    body: RejectIn,
    runtime: RuntimeDep,
    actor: ActorDep,
    key: Annotated[str | None, idempotency_key("the rejection of a later resolution")] = None,
) -> Complaint:
    async def change(tx: Transaction, c: Complaint) -> bool:
        # The customer's word only: each resolution's refund, coupon and redo is made, so
        # staff rejecting and proposing again could hand out remedies nobody asked for.
        if not (actor.role is Role.CUSTOMER and actor.subject == c.customer_id):
            raise Forbidden("only the complaint's customer may reject the resolution")
        before = c.tier
        policy = sla(c.category, c.severity)
        said = f"customer:{actor.subject}"
        if not c.reject(said, body.reason, utcnow(), policy, key, resolution_id=body.resolution_id):
            return False  # rejected before under this key
        if c.tier is not before:  # the top tier reopens where it is: nobody above to go to
            commands.escalated(tx, c, "the customer rejected the resolution", before.value)
        return True

    return await _work(runtime, actor, complaint_id, change)


# ----------------------------------------------------------------------- KPIs --

MAX_KPI_DAYS = 366


@router.get("/kpis", tags=["complaints"], summary="Complaint handling and ratings over a period")
async def read_kpis(
    runtime: RuntimeDep,
    actor: ActorDep,
    period_from: Annotated[Moment, Query(alias="from")],
    period_to: Annotated[Moment, Query(alias="to")],
) -> Kpis:
    """Operations see the whole platform; a store sees its own technicians only."""
    if not period_from < period_to <= period_from + timedelta(days=MAX_KPI_DAYS):
        raise Unprocessable(
            f"the period runs forwards and spans at most {MAX_KPI_DAYS} days", field="to"
        )
    scope = actor.store_scope(what="KPIs")
    opened = {"opened_at": {"$gte": period_from, "$lt": period_to}, **scope}
    written = {"created_at": {"$gte": period_from, "$lt": period_to}, **scope}
    complaints, stars = await asyncio.gather(
        Complaints(runtime.db).figures(opened), Reviews(runtime.db).stars_given(written)
    )
    return kpis(complaints, stars, period_from, period_to)
