"""Booking's HTTP API: regions, the public price list, customers and bookings."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Header, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pymongo.errors import DuplicateKeyError, WriteError

from services.booking import commands
from services.booking.domain import (
    MAX_ADDRESSES,
    MAX_FAVOURITES,
    MAX_ID,
    Address,
    AddressSnapshot,
    Booking,
    BookingStatus,
    CareProfile,
    Customer,
    TechnicianIdentity,
    TimelineEntry,
    fingerprint,
    new_booking_id,
    require_own_customer,
    resolve_window,
)
from services.booking.followup import (
    CallOutcome,
    CallRecord,
    CarePlan,
    FollowUp,
    FollowUpChoices,
    FollowUpKind,
    FollowUpStatus,
)
from services.booking.pricing import (
    MAX_CARE_DAYS,
    MIN_CARE_DAYS,
    CatalogueItem,
    ItemKind,
    LocalTime,
    PriceVersion,
    Quote,
    Requested,
    ServiceHours,
    Timing,
    quote,
    store_for,
    terms_for,
)
from services.booking.storage import (
    Bookings,
    CarePlans,
    Catalogue,
    Customers,
    FollowUps,
    Region,
    Regions,
)
from shared.auth import Actor, ActorDep, Role
from shared.errors import Conflict, Forbidden, NotFound, Unprocessable, VersionMismatch
from shared.events.types import Amount, Currency, GeoPoint, GeoPolygon, MinorUnits, PricedLine
from shared.mongo import bad_geometry
from shared.outbox import Transaction
from shared.privacy import Phone
from shared.schema import Forbid, idempotency_key
from shared.service import RuntimeDep
from shared.time import Moment, utcnow

router = APIRouter()

Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
Slug = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")]
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID, pattern=r"^[A-Za-z0-9_.-]+$")]
IdempotencyKey = Annotated[str | None, idempotency_key("a second booking")]
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description="The booking version you last read (its ETag); a stale one answers 409",
    ),
]
Language = Annotated[str, Field(pattern=r"^[a-z]{2}(-[A-Z]{2})?$", examples=["pt", "en-GB"])]


# ------------------------------------------------------------------ regions --
class HoursIn(Forbid):
    timezone: str = Field(examples=["Europe/Lisbon"])
    opens: LocalTime
    closes: LocalTime

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _order(self) -> HoursIn:
        if self.closes <= self.opens:
            raise ValueError("closes must be after opens")
        return self


class RegionIn(Forbid):
    name: str = Field(min_length=1, max_length=100)
    currency: Currency
    hours: HoursIn
    area: GeoPolygon


@router.put(
    "/regions/{region}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["regions"],
    summary="Define a served area (operations)",
)
async def put_region(
    region: Slug, body: RegionIn, actor: ActorDep, runtime: RuntimeDep
) -> Response:
    actor.require(Role.OPS)
    try:
        await Regions(runtime.db).put(
            Region(
                region=region,
                name=body.name,
                currency=body.currency,
                hours=ServiceHours(**body.hours.model_dump()),
                area=body.area.model_dump(),
            )
        )
    except WriteError as exc:
        if not bad_geometry(exc):
            raise
        raise Unprocessable(f"invalid area: {exc.details or exc}", field="area") from exc
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/regions", tags=["regions"], summary="Served areas")
async def list_regions(runtime: RuntimeDep) -> list[Region]:
    return await Regions(runtime.db).list()


# ---------------------------------------------------------------- catalogue --
def may_publish(actor: Actor, store_id: str | None) -> None:
    """A store publishes and prices its own items; the platform's own items are operations'."""
    if actor.speaks_for_store(store_id):
        return
    if actor.role is not Role.STORE:
        raise Forbidden("only a partner store or operations publish catalogue items")
    raise Forbidden("a store publishes and prices only its own items", field="store_id")


class CatalogueItemIn(Forbid):
    kind: ItemKind
    name: str = Field(min_length=1, max_length=200)
    category: Slug
    description: str = Field(default="", max_length=2000)
    duration_minutes: int = Field(default=0, ge=0, le=12 * 60)
    skill: Slug | None = None
    certificate: Slug | None = None
    store_id: Id | None = None
    care_every_days: int | None = Field(
        default=None,
        ge=MIN_CARE_DAYS,
        le=MAX_CARE_DAYS,
        description="Recurring care (a water filter every 90 days): customers who have it done "
        "are reminded a week before it is due again, if they want",
    )

    @model_validator(mode="after")
    def _service_needs(self) -> CatalogueItemIn:
        if self.kind is ItemKind.SERVICE and (self.skill is None or self.duration_minutes < 5):
            raise ValueError("a service item needs a skill and a duration of at least 5 minutes")
        if self.care_every_days is not None and self.kind is not ItemKind.SERVICE:
            raise ValueError("only a service item is recurring care (a product is used in one)")
        return self


class PriceIn(Forbid):
    region: Slug
    unit_price: Amount
    currency: Currency
    effective_from: Moment | None = Field(
        default=None, description="When the price takes effect (default: now; never the past)"
    )
    after_hours_surcharge: Amount = 0
    urgent_surcharge: Amount = 0
    cancellation_fee: Amount = 0
    free_cancellation_hours: int = Field(default=24, ge=0, le=24 * 14)


class ItemWithPrices(BaseModel):
    item: CatalogueItem
    prices: list[PriceVersion]


class PriceListEntry(BaseModel):
    """What a customer sees before booking: the price in force, and any announced change."""

    code: str
    kind: ItemKind
    name: str
    category: str
    description: str
    duration_minutes: int
    store_id: str | None
    region: str
    unit_price: MinorUnits
    currency: str
    after_hours_surcharge: MinorUnits
    urgent_surcharge: MinorUnits
    cancellation_fee: MinorUnits
    free_cancellation_hours: int
    effective_from: datetime
    next_change: PriceVersion | None


@router.put(
    "/catalogue/items/{code}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["catalogue"],
    summary="Publish a service item or product (a partner store or the platform)",
)
async def put_catalogue_item(
    code: Code, body: CatalogueItemIn, actor: ActorDep, runtime: RuntimeDep
) -> Response:
    catalogue = Catalogue(runtime.db)
    existing = await catalogue.item(code)
    if existing is not None and existing.store_id != body.store_id:
        raise Forbidden(f"item {code!r} belongs to another store", field="store_id")
    may_publish(actor, body.store_id)
    await catalogue.put_item(CatalogueItem(code=code, **body.model_dump()))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/catalogue/items/{code}/prices",
    status_code=status.HTTP_201_CREATED,
    tags=["catalogue"],
    summary="Publish a price for a region, from a date (earlier bookings keep their prices)",
)
async def add_price(
    code: Code, body: PriceIn, actor: ActorDep, runtime: RuntimeDep
) -> PriceVersion:
    now = utcnow()
    item = await Catalogue(runtime.db).item(code)
    if item is None:
        raise NotFound(f"catalogue item {code!r} does not exist")
    may_publish(actor, item.store_id)
    region = await Regions(runtime.db).get(body.region)
    if region is None:
        raise Unprocessable(f"region {body.region!r} does not exist", field="region")
    if body.currency != region.currency:
        raise Unprocessable(
            f"prices in {body.region} are in {region.currency}, not {body.currency}",
            field="currency",
        )
    effective = body.effective_from or now
    if effective < now - timedelta(minutes=1):
        raise Unprocessable(
            "a price cannot take effect in the past: history is never rewritten",
            field="effective_from",
        )
    price = PriceVersion(
        code=code, **body.model_dump(exclude={"effective_from"}), effective_from=effective
    )
    try:
        await Catalogue(runtime.db).add_price(price)
    except DuplicateKeyError:
        raise Conflict(
            f"{code} already has a price in {body.region} from {effective.isoformat()}",
            field="effective_from",
        ) from None
    return price


@router.get(
    "/catalogue/items/{code}",
    tags=["catalogue"],
    summary="An item with its whole price history in every region",
)
async def get_catalogue_item(code: Code, runtime: RuntimeDep) -> ItemWithPrices:
    catalogue = Catalogue(runtime.db)
    item = await catalogue.item(code)
    if item is None:
        raise NotFound(f"catalogue item {code!r} does not exist")
    return ItemWithPrices(item=item, prices=await catalogue.history(code))


@router.get("/catalogue/prices", tags=["catalogue"], summary="The public price list of a region")
async def price_list(
    runtime: RuntimeDep,
    region: Annotated[str, Query(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")],
    category: Annotated[str | None, Query(max_length=64)] = None,
) -> list[PriceListEntry]:
    listed = await Catalogue(runtime.db).price_list(region, utcnow(), category)
    return [
        PriceListEntry(
            **item.model_dump(exclude={"skill", "certificate"}),
            **price.model_dump(exclude={"code"}),
            next_change=upcoming,
        )
        for item, price, upcoming in listed
    ]


# ---------------------------------------------------------------- customers --
class ProfileIn(Forbid):
    name: str = Field(min_length=1, max_length=200)
    phone: Phone
    preferred_language: Language


class AddressIn(Forbid):
    label: str = Field(min_length=1, max_length=50, examples=["home"])
    line: str = Field(min_length=3, max_length=300)
    location: GeoPoint


class BookingSummary(BaseModel):
    booking_id: str
    status: BookingStatus
    window_start: datetime
    window_end: datetime
    services: list[str]
    total: MinorUnits
    currency: str
    technician: TechnicianIdentity | None


async def _customer(runtime: RuntimeDep, customer_id: str) -> Customer:
    customer = await Customers(runtime.db).get(customer_id)
    if customer is None:
        raise NotFound(f"customer {customer_id} does not exist")
    return customer


@router.put("/customers/{customer_id}", tags=["customers"], summary="Create or update a profile")
async def put_customer(
    customer_id: Id, body: ProfileIn, actor: ActorDep, runtime: RuntimeDep
) -> Customer:
    require_own_customer(actor, customer_id)
    return await Customers(runtime.db).upsert_profile(customer_id, **body.model_dump())


@router.get(
    "/customers/{customer_id}",
    tags=["customers"],
    summary="A customer's whole profile (the customer and operations only: it holds the phone)",
)
async def get_customer(customer_id: Id, actor: ActorDep, runtime: RuntimeDep) -> Customer:
    require_own_customer(actor, customer_id)
    return await _customer(runtime, customer_id)


@router.put(
    "/customers/{customer_id}/addresses/{address_id}",
    tags=["customers"],
    summary="Add or change an address (the app chooses the id, so a retry is harmless)",
)
async def put_address(
    customer_id: Id, address_id: Id, body: AddressIn, actor: ActorDep, runtime: RuntimeDep
) -> Address:
    require_own_customer(actor, customer_id)
    customer = await _customer(runtime, customer_id)
    others = [a for a in customer.addresses if a.address_id != address_id]
    if len(others) >= MAX_ADDRESSES:
        raise Unprocessable(f"at most {MAX_ADDRESSES} addresses", field="addresses")
    address = Address(address_id=address_id, **body.model_dump())
    customer.addresses = [*others, address]
    await Customers(runtime.db).save(customer)
    return address


@router.delete(
    "/customers/{customer_id}/addresses/{address_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["customers"],
    summary="Remove an address (bookings keep their own copy)",
)
async def remove_address(
    customer_id: Id, address_id: Id, actor: ActorDep, runtime: RuntimeDep
) -> Response:
    require_own_customer(actor, customer_id)
    customer = await _customer(runtime, customer_id)
    customer.address(address_id)  # 422 when it is not theirs
    customer.addresses = [a for a in customer.addresses if a.address_id != address_id]
    await Customers(runtime.db).save(customer)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put(
    "/customers/{customer_id}/care-profile",
    tags=["customers"],
    summary="What the technician may read before the visit",
)
async def put_care_profile(
    customer_id: Id, body: CareProfile, actor: ActorDep, runtime: RuntimeDep
) -> CareProfile:
    require_own_customer(actor, customer_id)
    customer = await _customer(runtime, customer_id)
    customer.care_profile = body
    await Customers(runtime.db).save(customer)
    return body


@router.put(
    "/customers/{customer_id}/favourites/{technician_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["customers"],
    summary="Mark a favourite technician (preferred when free)",
)
async def add_favourite(
    customer_id: Id, technician_id: Id, actor: ActorDep, runtime: RuntimeDep
) -> Response:
    require_own_customer(actor, customer_id)
    customer = await _customer(runtime, customer_id)
    if technician_id not in customer.favourite_technicians:
        if len(customer.favourite_technicians) >= MAX_FAVOURITES:
            raise Unprocessable(f"at most {MAX_FAVOURITES} favourites", field="technician_id")
        customer.favourite_technicians.append(technician_id)
        await Customers(runtime.db).save(customer)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete(
    "/customers/{customer_id}/favourites/{technician_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["customers"],
    summary="Forget a favourite technician",
)
async def remove_favourite(
    customer_id: Id, technician_id: Id, actor: ActorDep, runtime: RuntimeDep
) -> Response:
    require_own_customer(actor, customer_id)
    customer = await _customer(runtime, customer_id)
    if technician_id in customer.favourite_technicians:
        customer.favourite_technicians.remove(technician_id)
        await Customers(runtime.db).save(customer)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/customers/{customer_id}/bookings",
    tags=["customers"],
    summary="The customer's booking history, newest first",
)
async def booking_history(
    customer_id: Id, actor: ActorDep, runtime: RuntimeDep
) -> list[BookingSummary]:
    require_own_customer(actor, customer_id)
    await _customer(runtime, customer_id)
    return [_summary(b) for b in await Bookings(runtime.db).for_customer(customer_id)]


# ----------------------------------------------------------------- bookings --
class RequestedItem(Forbid):
    code: Code
    quantity: int = Field(ge=1, le=20)


class TimingIn(Forbid):
    timing: Timing = Timing.WINDOW
    window_start: Moment | None = None
    window_end: Moment | None = None


class BookingRequest(TimingIn):
    """What a customer asks for. Prices are never sent: they come from the catalogue."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "cus_ana",
                    "address_id": "ad_0123456789abcdef",
                    "timing": "window",
                    "window_start": "2030-05-01T09:00:00Z",
                    "window_end": "2030-05-01T11:00:00Z",
                    "items": [{"code": "nails.manicure", "quantity": 1}],
                }
            ]
        },
    )

    customer_id: Id
    address_id: Id
    items: list[RequestedItem] = Field(min_length=1, max_length=20)
    preferred_technician_id: Id | None = None
    store_id: Id | None = Field(
        None,
        description="Only this partner store's technicians come: the store whose card or "
        "package you hold (it pays only for its own technicians' visits). A store's own "
        "items name their store themselves",
    )


class RescheduleIn(Forbid):
    window_start: Moment
    window_end: Moment


class CancelIn(Forbid):
    reason: str = Field(default="cancelled by the customer", min_length=1, max_length=500)


class BookingView(BaseModel):
    """A booking as its caller may see it (the customer and operations see all of it)."""

    booking_id: str
    customer_id: str
    status: BookingStatus
    region: str
    address: AddressSnapshot | None = Field(
        description="To the customer and operations; to the technician only from accepting "
        "the visit until it is done (and not once a safety alert stopped it); never to a store"
    )
    timing: Timing
    window_start: datetime
    window_end: datetime
    lines: list[PricedLine]
    total: MinorUnits
    currency: str
    after_hours: bool
    urgent: bool
    duration_minutes: int
    cancellation_fee_after_cutoff: MinorUnits
    free_cancellation_until: datetime
    cancellation_fee: MinorUnits | None
    halted_at: datetime | None = Field(
        None,
        description="A safety alert stopped the visit (wrong codes, or not the person shown): "
        "it goes no further, and the customer or operations cancel it, free",
    )
    technician_late_at: datetime | None = Field(
        None,
        description="The technician had not checked in when the visit should have begun: "
        "operations were told, and cancelling is free from then",
    )
    technician: TechnicianIdentity | None
    preferred_technician_id: str | None
    rebooked_from: str | None
    redo_for_complaint: str | None = None
    store_id: str | None = Field(
        None, description="Only this partner store's technicians come (None: anyone qualified)"
    )
    timeline: list[TimelineEntry]
    version: int
    created_at: datetime


class CareProfileView(BaseModel):
    """What the assigned technician reads before the visit: no phone, no other address."""

    booking_id: str
    customer_name: str
    preferred_language: str
    care_profile: CareProfile


def view(
    booking: Booking, response: Response | None = None, actor: Actor | None = None
) -> BookingView:
    """The booking as this caller may see it: the address only to those who need it."""
    if response is not None:
        response.headers["ETag"] = f'"{booking.version}"'
    q = booking.quote
    hidden = actor is not None and not booking.address_visible_to(actor)
    return BookingView(
        **booking.model_dump(
            include={
                "booking_id",
                "customer_id",
                "status",
                "region",
                "address",
                "timing",
                "window_start",
                "window_end",
                "cancellation_fee",
                "halted_at",
                "technician_late_at",
                "technician",
                "preferred_technician_id",
                "rebooked_from",
                "redo_for_complaint",
                "store_id",
                "timeline",
                "version",
                "created_at",
            }
        ),
        lines=q.lines,
        total=q.total,
        currency=q.currency,
        after_hours=q.after_hours,
        urgent=q.urgent,
        duration_minutes=q.duration_minutes,
        cancellation_fee_after_cutoff=q.cancellation_fee,
        free_cancellation_until=q.free_cancellation_until,
    ).model_copy(update={"address": None} if hidden else {})


def _summary(booking: Booking) -> BookingSummary:
    return BookingSummary(
        booking_id=booking.booking_id,
        status=booking.status,
        window_start=booking.window_start,
        window_end=booking.window_end,
        services=[line.name for line in booking.quote.lines],
        total=booking.quote.total,
        currency=booking.quote.currency,
        technician=booking.technician,
    )


def _expected_version(if_match: str | None) -> int | None:
    if if_match is None:
        return None
    raw = if_match.strip().removeprefix("W/").strip('"')
    if not raw.isdigit():
        raise Unprocessable(
            'If-Match must be a booking version as sent in its ETag, e.g. "3"', field="If-Match"
        )
    return int(raw)


async def _draft(
    runtime: RuntimeDep,
    customer: Customer,
    address_id: str,
    items: list[RequestedItem],
    timing: TimingIn,
    *,
    store_id: str | None = None,
) -> tuple[Region, AddressSnapshot, datetime, datetime, list[Any], Quote, str | None]:
    """Validate and price a would-be booking from the catalogue (nothing is stored)."""
    now = utcnow()
    address = customer.address(address_id)
    codes = [i.code for i in items]
    catalogue = Catalogue(runtime.db)
    region, found = await asyncio.gather(
        Regions(runtime.db).containing(address.location), catalogue.items(codes)
    )
    if region is None:
        raise Unprocessable(
            f"address {address_id} lies outside every area we serve", field="address_id"
        )
    start, end, after_hours = resolve_window(
        timing.timing, timing.window_start, timing.window_end, now, region.hours
    )
    requested = [Requested(i.code, i.quantity) for i in items]
    terms = terms_for(
        found, await catalogue.prices(codes, region.region), requested, region.region, now
    )
    store = store_for(found, requested, store_id)
    priced = quote(terms, start, after_hours=after_hours, urgent=timing.timing is Timing.URGENT)
    snapshot = AddressSnapshot(
        address_id=address.address_id, line=address.line, location=address.location
    )
    return region, snapshot, start, end, terms, priced, store


@router.post(
    "/bookings/quote",
    tags=["bookings"],
    summary="Price a booking from the catalogue before confirming it (stores nothing)",
)
async def quote_booking(request: BookingRequest, actor: ActorDep, runtime: RuntimeDep) -> Quote:
    require_own_customer(actor, request.customer_id)
    customer = await _customer(runtime, request.customer_id)
    *_, priced, _ = await _draft(
        runtime, customer, request.address_id, request.items, request, store_id=request.store_id
    )
    return priced


async def _create(
    runtime: RuntimeDep,
    request: BookingRequest,
    idempotency_key: str | None,
    response: Response,
    rebooked_from: str | None = None,
) -> BookingView:
    bookings = Bookings(runtime.db)
    # A field added since is left out while unset: a retry of a booking made before it
    # still matches its key.
    body = request.model_dump(mode="json", exclude={"store_id"} if not request.store_id else None)
    key_fingerprint = fingerprint({**body, "rebooked_from": rebooked_from})
    if idempotency_key:
        existing = await bookings.by_idempotency_key(request.customer_id, idempotency_key)
        if existing:
            return _replay(existing, key_fingerprint, response)
    customer = await _customer(runtime, request.customer_id)
    region, address, start, end, terms, priced, store = await _draft(
        runtime, customer, request.address_id, request.items, request, store_id=request.store_id
    )
    preferred = request.preferred_technician_id or next(iter(customer.favourite_technicians), None)
    now = utcnow()
    booking = Booking(
        booking_id=new_booking_id(),
        customer_id=customer.customer_id,
        region=region.region,
        address=address,
        timing=request.timing,
        window_start=start,
        window_end=end,
        terms=terms,
        quote=priced,
        preferred_technician_id=preferred,
        rebooked_from=rebooked_from,
        store_id=store,
        idempotency_key=idempotency_key,
        request_fingerprint=key_fingerprint,
        created_at=now,
        timeline=[TimelineEntry(status=BookingStatus.REQUESTED, at=now)],
    )

    async def place(tx: Transaction) -> None:
        await commands.place(tx, booking)

    try:
        await runtime.uow.run(place)
    except DuplicateKeyError:
        # A concurrent retry with the same key won the race: answer with its booking.
        existing = await bookings.by_idempotency_key(request.customer_id, idempotency_key or "")
        if existing is None:
            raise
        return _replay(existing, key_fingerprint, response)
    response.status_code = status.HTTP_201_CREATED
    return view(booking, response)


def _replay(existing: Booking, key_fingerprint: str, response: Response) -> BookingView:
    if existing.request_fingerprint != key_fingerprint:
        raise Conflict(
            "this Idempotency-Key was already used for a different request",
            field="Idempotency-Key",
        )
    response.status_code = status.HTTP_200_OK
    return view(existing, response)


@router.post(
    "/bookings",
    status_code=status.HTTP_201_CREATED,
    tags=["bookings"],
    summary="Book a visit (retry-safe with Idempotency-Key); 201 new, 200 a replayed retry",
)
async def create_booking(
    request: BookingRequest,
    actor: ActorDep,
    runtime: RuntimeDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> BookingView:
    require_own_customer(actor, request.customer_id)
    return await _create(runtime, request, idempotency_key, response)


@router.get("/bookings/{booking_id}", tags=["bookings"], summary="A booking with its timeline")
async def get_booking(
    booking_id: Id, actor: ActorDep, runtime: RuntimeDep, response: Response
) -> BookingView:
    return view(await readable(runtime, actor, booking_id), response, actor)


@router.get(
    "/bookings",
    tags=["bookings"],
    summary="A customer's bookings, or those a store's technicians serve; newest first",
)
async def list_bookings(
    actor: ActorDep,
    runtime: RuntimeDep,
    customer_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    store_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
) -> list[BookingView]:
    if (customer_id is None) == (store_id is None):
        raise Unprocessable("give customer_id or store_id (one of them)", field="customer_id")
    if customer_id is not None:
        require_own_customer(actor, customer_id)
        found = await Bookings(runtime.db).for_customer(customer_id)
    else:
        if not actor.speaks_for_store(store_id):
            raise Forbidden(
                "a store sees only its own bookings (its technicians', or booked with it)"
            )
        found = await Bookings(runtime.db).for_store(store_id or "")
    return [view(b, actor=actor) for b in found]


async def readable(runtime: RuntimeDep, actor: Actor, booking_id: str) -> Booking:
    """The booking, if this caller may see it; otherwise answered as if it did not exist,
    so that booking ids cannot be probed."""
    booking = await Bookings(runtime.db).get(booking_id)
    if booking is None or not booking.readable_by(actor):
        raise NotFound(f"booking {booking_id} does not exist")
    return booking


async def changeable(runtime: RuntimeDep, actor: Actor, booking_id: str) -> Booking:
    booking = await readable(runtime, actor, booking_id)
    if not (actor.is_ops or booking.owned_by(actor)):
        raise Forbidden("only the booking's customer or operations change a booking")
    return booking


@router.post(
    "/bookings/{booking_id}/cancel",
    tags=["bookings"],
    summary="Cancel: free until the cut-off before the window, the catalogue's fee after it",
)
async def cancel_booking(
    booking_id: Id,
    *,
    runtime: RuntimeDep,
    response: Response,
    actor: ActorDep,
    body: CancelIn | None = None,
    if_match: IfMatch = None,
) -> BookingView:
    await changeable(runtime, actor, booking_id)
    reason = (body or CancelIn()).reason
    expected = _expected_version(if_match)

    async def work(tx: Transaction) -> Booking:
        return await commands.change(
            tx, booking_id, lambda b: b.cancel(utcnow(), reason), expected_version=expected
        )

    return view(await runtime.uow.run(work), response, actor)


@router.post(
    "/bookings/{booking_id}/reschedule",
    tags=["bookings"],
    summary="Move to a new window at the booked prices; dispatch re-checks the technician",
)
async def reschedule_booking(
    booking_id: Id,
    *,
    body: RescheduleIn,
    actor: ActorDep,
    runtime: RuntimeDep,
    response: Response,
    if_match: IfMatch = None,
) -> BookingView:
    expected = _expected_version(if_match)
    current = await changeable(runtime, actor, booking_id)
    region = await Regions(runtime.db).get(current.region)
    if region is None:
        raise Conflict(f"region {current.region} is no longer served", field="region")

    async def work(tx: Transaction) -> Booking:
        return await commands.change(
            tx,
            booking_id,
            lambda b: b.reschedule(body.window_start, body.window_end, region.hours, utcnow()),
            expected_version=expected,
        )

    return view(await runtime.uow.run(work), response, actor)


@router.post(
    "/bookings/{booking_id}/book-again",
    status_code=status.HTTP_201_CREATED,
    tags=["bookings"],
    summary="Same services, same address, same technician preferred, a new window: one call",
)
async def book_again(
    booking_id: Id,
    *,
    body: TimingIn,
    actor: ActorDep,
    runtime: RuntimeDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> BookingView:
    previous = await changeable(runtime, actor, booking_id)
    request = BookingRequest(
        customer_id=previous.customer_id,
        address_id=previous.address.address_id,
        items=[RequestedItem(code=t.code, quantity=t.quantity) for t in previous.terms],
        preferred_technician_id=(
            previous.technician.technician_id
            if previous.technician
            else previous.preferred_technician_id
        ),
        store_id=previous.store_id,  # the same store: its card pays again
        **body.model_dump(),
    )
    return await _create(runtime, request, idempotency_key, response, rebooked_from=booking_id)


@router.get(
    "/bookings/{booking_id}/care-profile",
    tags=["bookings"],
    summary="The customer's care profile, for the technician assigned to this booking only",
)
async def care_profile_for_technician(
    booking_id: Id, actor: ActorDep, runtime: RuntimeDep
) -> CareProfileView:
    booking = await readable(runtime, actor, booking_id)
    if not booking.address_visible_to(actor):
        raise Forbidden(
            "only the technician assigned to this visit reads the care profile, "
            "from accepting the visit until it is done"
        )
    customer = await _customer(runtime, booking.customer_id)
    return CareProfileView(
        booking_id=booking_id,
        customer_name=customer.name,
        preferred_language=customer.preferred_language,
        care_profile=customer.care_profile,
    )


# ---------------------------------------------------------------- follow-up --
@router.get(
    "/customers/{customer_id}/follow-up",
    tags=["follow-up"],
    summary="Which follow-ups the customer wants (every one, until they say otherwise)",
)
async def get_follow_up_choices(
    customer_id: Id, actor: ActorDep, runtime: RuntimeDep
) -> FollowUpChoices:
    require_own_customer(actor, customer_id)
    return (await _customer(runtime, customer_id)).follow_up_choices


class FollowUpChoicesIn(Forbid):
    """Only what the customer changes; the rest stays as they chose it."""

    thank_you: bool | None = None
    call_after_week: bool | None = None
    check_after_three_months: bool | None = None
    care_reminders: bool | None = None

    @model_validator(mode="after")
    def _something(self) -> FollowUpChoicesIn:
        if not self.model_dump(exclude_none=True):
            raise ValueError("give at least one of the choices")
        return self


@router.patch(
    "/customers/{customer_id}/follow-up",
    tags=["follow-up"],
    summary="Choose the follow-ups: a thank-you, a call after a larger job, a check three "
    "months on, care reminders (decided when each falls due; a call turned off leaves the "
    "call list at once)",
)
async def change_follow_up_choices(
    customer_id: Id, body: FollowUpChoicesIn, actor: ActorDep, runtime: RuntimeDep
) -> FollowUpChoices:
    require_own_customer(actor, customer_id)

    async def work(tx: Transaction) -> FollowUpChoices:
        customer = await Customers(tx.db).get(customer_id, tx.session)
        if customer is None:
            raise NotFound(f"customer {customer_id} does not exist")
        customer.follow_up = customer.follow_up_choices.model_copy(
            update=body.model_dump(exclude_none=True)
        )
        await Customers(tx.db).save(customer, tx.session)
        if not customer.follow_up.call_after_week:
            await FollowUps(tx.db).calls_not_wanted(customer_id, utcnow(), tx.session)
        return customer.follow_up

    return await runtime.uow.run(work)


class FollowUpView(BaseModel):
    """A follow-up as its customer sees it: never operations' notes of a call."""

    follow_up_id: str
    kind: FollowUpKind
    booking_id: str
    services: list[str]
    due_at: datetime
    status: FollowUpStatus
    sent_with: str | None = Field(
        None, description="Told in this follow-up's message (one thank-you a day for all visits)"
    )


@router.get(
    "/customers/{customer_id}/follow-ups",
    tags=["follow-up"],
    summary="The customer's follow-ups, latest due first: what is coming and what was done",
)
async def customer_follow_ups(
    customer_id: Id, actor: ActorDep, runtime: RuntimeDep
) -> list[FollowUpView]:
    require_own_customer(actor, customer_id)
    found = await FollowUps(runtime.db).for_customer(customer_id)
    return [FollowUpView.model_validate(f.model_dump()) for f in found]


class CallToMake(BaseModel):
    """One line of operations' call list: who to call, about what. The phone is here
    because the caller needs it; only operations read this list."""

    follow_up_id: str
    booking_id: str
    customer_id: str
    customer_name: str
    phone: str
    preferred_language: str
    region: str
    services: list[str]
    due_at: datetime
    calls: list[CallRecord]
    version: int


@router.get(
    "/follow-ups/calls",
    tags=["follow-up"],
    summary="Operations' call list: customers to call a week after a larger job, due first",
)
async def calls_to_make(
    actor: ActorDep,
    runtime: RuntimeDep,
    region: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[CallToMake]:
    actor.require(Role.OPS)
    due = await FollowUps(runtime.db).calls_due(utcnow(), region, limit)
    customers = Customers(runtime.db)
    listed = []
    for follow_up in due:
        customer = await customers.get(follow_up.customer_id)
        if customer is None:
            continue
        listed.append(
            CallToMake(
                **follow_up.model_dump(
                    include={
                        "follow_up_id",
                        "booking_id",
                        "customer_id",
                        "region",
                        "services",
                        "due_at",
                        "calls",
                        "version",
                    }
                ),
                customer_name=customer.name,
                phone=customer.phone,
                preferred_language=customer.preferred_language,
            )
        )
    return listed


class CallIn(Forbid):
    outcome: CallOutcome
    note: str = Field(default="", max_length=2000, description="Operations' own: never shown")
    version: int = Field(
        ge=0, description="The follow-up's version on the call list: a stale list gets 409"
    )


@router.post(
    "/follow-ups/{follow_up_id}/calls",
    tags=["follow-up"],
    summary="Record a call: reached or declined closes it; no answer tries again the next "
    "morning (three attempts in all)",
)
async def record_call(
    follow_up_id: Id, body: CallIn, actor: ActorDep, runtime: RuntimeDep
) -> FollowUp:
    actor.require(Role.OPS)
    store = FollowUps(runtime.db)
    follow_up = await store.existing(follow_up_id, what="follow-up", field="follow_up_id")
    if follow_up.version != body.version:
        raise VersionMismatch(
            f"follow-up {follow_up_id} is at version {follow_up.version}, not {body.version}: "
            "someone recorded a call meanwhile; reload the call list",
            field="version",
        )
    zone = await commands.region_zone(runtime.db, follow_up.region)
    follow_up.record_call(body.outcome, actor.subject, body.note, utcnow(), zone)
    await store.save(follow_up)
    return follow_up


async def _own_plan(runtime: RuntimeDep, actor: Actor, customer_id: str, plan_id: str) -> CarePlan:
    require_own_customer(actor, customer_id)
    plan = await CarePlans(runtime.db).get(plan_id)
    if plan is None or plan.customer_id != customer_id:
        raise NotFound(f"care plan {plan_id} does not exist", field="plan_id")
    return plan


@router.get(
    "/customers/{customer_id}/care-plans",
    tags=["follow-up"],
    summary="Recurring care: what is due again when (started by a visit that needs it)",
)
async def care_plans(customer_id: Id, actor: ActorDep, runtime: RuntimeDep) -> list[CarePlan]:
    require_own_customer(actor, customer_id)
    return await CarePlans(runtime.db).for_customer(customer_id)


class CarePlanIn(Forbid):
    every_days: int | None = Field(
        default=None, ge=MIN_CARE_DAYS, le=MAX_CARE_DAYS, description="How often, in days"
    )
    active: bool | None = Field(default=None, description="False stops the reminders")

    @model_validator(mode="after")
    def _something(self) -> CarePlanIn:
        if self.every_days is None and self.active is None:
            raise ValueError("give every_days, active, or both")
        return self


@router.patch(
    "/customers/{customer_id}/care-plans/{plan_id}",
    tags=["follow-up"],
    summary="Change how often recurring care comes round, or stop (or start) its reminders",
)
async def change_care_plan(
    customer_id: Id, plan_id: Id, body: CarePlanIn, actor: ActorDep, runtime: RuntimeDep
) -> CarePlan:
    plan = await _own_plan(runtime, actor, customer_id, plan_id)

    async def work(tx: Transaction) -> CarePlan:
        current = await CarePlans(tx.db).existing(plan.plan_id, tx.session, what="care plan")
        current.change(body.every_days, body.active, await commands.region_zone(tx.db, plan.region))
        await CarePlans(tx.db).save(current, tx.session)
        await commands.arm_reminder(tx, current)
        return current

    return await runtime.uow.run(work)


@router.post(
    "/customers/{customer_id}/care-plans/{plan_id}/book",
    status_code=status.HTTP_201_CREATED,
    tags=["follow-up"],
    summary="Book the care that is due: the same service at the same address, a new window",
)
async def book_care(
    customer_id: Id,
    plan_id: Id,
    *,
    body: TimingIn,
    actor: ActorDep,
    runtime: RuntimeDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> BookingView:
    plan = await _own_plan(runtime, actor, customer_id, plan_id)
    request = BookingRequest(
        customer_id=customer_id,
        address_id=plan.address_id,
        items=[RequestedItem(code=plan.code, quantity=1)],
        **body.model_dump(),
    )
    return await _create(runtime, request, idempotency_key, response)
