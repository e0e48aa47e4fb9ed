"""Booking's HTTP API: the public price list and bookings."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field
from pymongo.errors import DuplicateKeyError

from services.booking.domain import (
    Booking,
    BookingStatus,
    CatalogueItem,
    TimelineEntry,
    check_window,
    new_booking_id,
    quote,
)
from services.booking.storage import Bookings, Catalogue
from shared.errors import NotFound
from shared.events.booking import BookingRequested
from shared.events.types import Currency, GeoPoint, MinorUnits
from shared.outbox import Transaction
from shared.service import RuntimeDep
from shared.time import utcnow

router = APIRouter()

Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
Region = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$")]


class CatalogueItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    skill: str = Field(min_length=1, max_length=64)
    region: Region
    unit_price: MinorUnits
    currency: Currency
    duration_minutes: int = Field(ge=5, le=12 * 60)


class CatalogueItemOut(CatalogueItemIn):
    code: str


class RequestedItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: Code
    quantity: int = Field(ge=1, le=20)


class BookingRequest(BaseModel):
    """What a customer asks for. Prices are never sent: they come from the catalogue."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "cus_ana",
                    "region": "lisbon",
                    "location": {"lat": 38.7223, "lon": -9.1393},
                    "address": "Rua Augusta 100, 2 esq",
                    "window_start": "2030-05-01T09:00:00Z",
                    "window_end": "2030-05-01T11:00:00Z",
                    "items": [{"code": "nails.manicure", "quantity": 1}],
                }
            ]
        },
    )

    customer_id: Annotated[str, Field(min_length=1, max_length=64)]
    region: Region
    location: GeoPoint
    address: str = Field(min_length=3, max_length=300)
    window_start: datetime
    window_end: datetime
    items: list[RequestedItem] = Field(min_length=1, max_length=20)


@router.put(
    "/catalogue/items/{code}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["catalogue"],
    summary="Publish a service item's price in a region",
)
async def put_catalogue_item(code: Code, item: CatalogueItemIn, runtime: RuntimeDep) -> Response:
    await Catalogue(runtime.db).put(CatalogueItem(code=code, **item.model_dump()))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/catalogue/items", tags=["catalogue"], summary="The public price list")
async def list_catalogue(
    runtime: RuntimeDep, region: Annotated[str | None, Query(max_length=64)] = None
) -> list[CatalogueItemOut]:
    return [CatalogueItemOut(**i.__dict__) for i in await Catalogue(runtime.db).list(region)]


@router.post(
    "/bookings",
    status_code=status.HTTP_201_CREATED,
    tags=["bookings"],
    summary="Request a visit (retry-safe with Idempotency-Key)",
)
async def create_booking(
    request: BookingRequest,
    runtime: RuntimeDep,
    response: Response,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=8, max_length=128)
    ] = None,
) -> Booking:
    bookings = Bookings(runtime.db)
    if idempotency_key:
        existing = await bookings.by_idempotency_key(request.customer_id, idempotency_key)
        if existing:
            response.status_code = status.HTTP_200_OK
            return existing
    now = utcnow()
    check_window(request.window_start, request.window_end, now)
    catalogue = await Catalogue(runtime.db).by_codes([i.code for i in request.items])
    priced = quote(catalogue, [(i.code, i.quantity) for i in request.items], request.region)
    booking_id = new_booking_id()
    booking = Booking(
        booking_id=booking_id,
        customer_id=request.customer_id,
        region=request.region,
        location=request.location,
        address=request.address,
        window_start=request.window_start,
        window_end=request.window_end,
        lines=priced.lines,
        total=priced.total,
        currency=priced.currency,
        idempotency_key=idempotency_key,
        created_at=now,
        timeline=[TimelineEntry(status=BookingStatus.REQUESTED, at=now)],
    )

    async def place(tx: Transaction) -> None:
        await bookings.insert(booking, tx.session)
        tx.emit(
            BookingRequested(
                booking_id=booking.booking_id,
                customer_id=booking.customer_id,
                region=booking.region,
                location=booking.location,
                window_start=booking.window_start,
                window_end=booking.window_end,
                lines=booking.lines,
                total=booking.total,
                currency=booking.currency,
            ),
            correlation_id=booking.booking_id,
        )

    try:
        await runtime.uow.run(place)
    except DuplicateKeyError:
        # A concurrent retry with the same key won the race: answer with its booking.
        existing = await bookings.by_idempotency_key(request.customer_id, idempotency_key or "")
        if existing is None:
            raise
        response.status_code = status.HTTP_200_OK
        return existing
    return booking


@router.get("/bookings/{booking_id}", tags=["bookings"], summary="A booking with its timeline")
async def get_booking(booking_id: str, runtime: RuntimeDep) -> Booking:
    booking = await Bookings(runtime.db).get(booking_id)
    if booking is None:
        raise NotFound(f"booking {booking_id} does not exist")
    return booking


@router.get("/bookings", tags=["bookings"], summary="A customer's bookings, newest first")
async def list_bookings(
    runtime: RuntimeDep, customer_id: Annotated[str, Query(min_length=1, max_length=64)]
) -> list[Booking]:
    return await Bookings(runtime.db).for_customer(customer_id)
