"""The public /v1 API: validates at the edge, forwards to the owning service, composes views."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Header, Path, Query, Request, status
from fastapi.responses import JSONResponse

from services.booking.api import (
    AddressIn,
    BookingRequest,
    CancelIn,
    ProfileIn,
    RescheduleIn,
    TimingIn,
)
from services.booking.domain import CareProfile
from services.gateway.domain import BookingView, ComplaintStatus
from services.gateway.security import EdgeActor
from services.gateway.upstream import Upstream, UpstreamError
from shared.auth import Actor, Role
from shared.errors import Forbidden, NotFound

router = APIRouter(prefix="/v1")

Id = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=8, max_length=128)
]
IfMatch = Annotated[str | None, Header(alias="If-Match", max_length=32)]
PASSED_HEADERS = ("ETag",)


def upstream(request: Request) -> Upstream:
    client: Upstream = request.app.state.upstream
    return client


def relay(response: httpx.Response) -> JSONResponse:
    headers = {h: response.headers[h] for h in PASSED_HEADERS if h in response.headers}
    try:
        content = response.json() if response.content else None
    except ValueError:
        raise UpstreamError.from_response(response) from None  # 502 in the one error shape
    return JSONResponse(status_code=response.status_code, content=content, headers=headers)


def _headers(**values: str | None) -> dict[str, str]:
    names = {"idempotency_key": "Idempotency-Key", "if_match": "If-Match"}
    return {names[k]: v for k, v in values.items() if v is not None}


async def forward(
    request: Request,
    method: str,
    path: str,
    *,
    actor: Actor | None = None,
    body: Any = None,
    params: dict[str, str] | None = None,
    **headers: str | None,
) -> JSONResponse:
    """Call the booking service as the verified caller (never as the client claims)."""
    json = body.model_dump(mode="json") if body is not None else None
    sent = {**_headers(**headers), **(actor.headers() if actor else {})}
    response = await upstream(request).call(
        "booking", method, path, json=json, params=params, headers=sent
    )
    if response.status_code == status.HTTP_204_NO_CONTENT:
        return JSONResponse(status_code=204, content=None)
    return relay(response)


def own_customer(actor: Actor, customer_id: str) -> None:
    """A customer reaches only their own profile and history; operations any."""
    if not (actor.is_ops or (actor.role is Role.CUSTOMER and actor.subject == customer_id)):
        raise Forbidden("this is another customer's")


async def readable_booking(request: Request, actor: Actor, booking_id: str) -> dict[str, Any]:
    """The booking, if the caller may see it: its customer, its assigned technician, ops."""
    response = await upstream(request).call(
        "booking", "GET", f"/bookings/{booking_id}", headers=actor.headers()
    )
    if response.status_code != 200:
        raise UpstreamError.from_response(response)
    booking: dict[str, Any] = response.json()
    technician = (booking.get("technician") or {}).get("technician_id")
    allowed = (
        actor.is_ops
        or (actor.role is Role.CUSTOMER and booking.get("customer_id") == actor.subject)
        or (actor.role is Role.TECHNICIAN and technician == actor.subject)
    )
    if not allowed:
        # Not yours: answered like a booking that does not exist, so ids cannot be probed.
        raise NotFound(f"booking {booking_id} does not exist")
    return booking


async def changeable_booking(request: Request, actor: Actor, booking_id: str) -> None:
    booking = await readable_booking(request, actor, booking_id)
    if not (actor.is_ops or booking.get("customer_id") == actor.subject):
        raise Forbidden("only the booking's customer or operations change a booking")


# ---------------------------------------------------------------- catalogue --
@router.get("/catalogue/prices", tags=["catalogue"], summary="The public price list of a region")
async def price_list(
    request: Request,
    region: Annotated[str, Query(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")],
    category: Annotated[str | None, Query(max_length=64)] = None,
) -> JSONResponse:
    params = {"region": region, **({"category": category} if category else {})}
    return await forward(request, "GET", "/catalogue/prices", params=params)


# ---------------------------------------------------------------- customers --
@router.put("/customers/{customer_id}", tags=["customers"], summary="Create or update a profile")
async def put_customer(
    customer_id: Id, body: ProfileIn, request: Request, actor: EdgeActor
) -> JSONResponse:
    own_customer(actor, customer_id)
    return await forward(request, "PUT", f"/customers/{customer_id}", actor=actor, body=body)


@router.get("/customers/{customer_id}", tags=["customers"], summary="A customer's profile")
async def get_customer(customer_id: Id, request: Request, actor: EdgeActor) -> JSONResponse:
    own_customer(actor, customer_id)
    return await forward(request, "GET", f"/customers/{customer_id}", actor=actor)


@router.put(
    "/customers/{customer_id}/addresses/{address_id}",
    tags=["customers"],
    summary="Add or change an address",
)
async def put_address(
    customer_id: Id, address_id: Id, body: AddressIn, request: Request, actor: EdgeActor
) -> JSONResponse:
    own_customer(actor, customer_id)
    return await forward(
        request, "PUT", f"/customers/{customer_id}/addresses/{address_id}", actor=actor, body=body
    )


@router.put(
    "/customers/{customer_id}/care-profile",
    tags=["customers"],
    summary="What the technician may read before the visit",
)
async def put_care_profile(
    customer_id: Id, body: CareProfile, request: Request, actor: EdgeActor
) -> JSONResponse:
    own_customer(actor, customer_id)
    path = f"/customers/{customer_id}/care-profile"
    return await forward(request, "PUT", path, actor=actor, body=body)


@router.get("/customers/{customer_id}/bookings", tags=["customers"], summary="The booking history")
async def booking_history(customer_id: Id, request: Request, actor: EdgeActor) -> JSONResponse:
    own_customer(actor, customer_id)
    return await forward(request, "GET", f"/customers/{customer_id}/bookings", actor=actor)


# ----------------------------------------------------------------- bookings --
@router.post("/bookings/quote", tags=["bookings"], summary="Price a booking before confirming it")
async def quote_booking(body: BookingRequest, request: Request, actor: EdgeActor) -> JSONResponse:
    own_customer(actor, body.customer_id)
    return await forward(request, "POST", "/bookings/quote", actor=actor, body=body)


@router.post("/bookings", tags=["bookings"], status_code=201, summary="Book a visit")
async def create_booking(
    body: BookingRequest, request: Request, actor: EdgeActor, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    own_customer(actor, body.customer_id)
    return await forward(
        request, "POST", "/bookings", actor=actor, body=body, idempotency_key=idempotency_key
    )


@router.get("/bookings/{booking_id}", tags=["bookings"], summary="A booking with its receipt state")
async def get_booking(booking_id: Id, request: Request, actor: EdgeActor) -> BookingView:
    booking = await readable_booking(request, actor, booking_id)
    # Payments and reviews check again that what they return is this caller's to see.
    client = upstream(request)
    receipt, complaints = await asyncio.gather(
        client.call(
            "payments",
            "GET",
            "/receipts",
            params={"booking_id": booking_id},
            headers=actor.headers(),
        ),
        client.call(
            "reviews",
            "GET",
            "/complaints",
            params={"booking_id": booking_id},
            headers=actor.headers(),
        ),
    )
    return BookingView(
        booking=booking,
        receipt=receipt.json() if receipt.status_code == 200 else None,
        complaints=[
            ComplaintStatus.model_validate(
                {k: c[k] for k in ("complaint_id", "category", "status", "tier")}
            )
            for c in (complaints.json() if complaints.status_code == 200 else [])
        ],
    )


@router.post("/bookings/{booking_id}/cancel", tags=["bookings"], summary="Cancel a booking")
async def cancel_booking(
    booking_id: Id,
    request: Request,
    actor: EdgeActor,
    body: CancelIn | None = None,
    if_match: IfMatch = None,
) -> JSONResponse:
    await changeable_booking(request, actor, booking_id)
    path = f"/bookings/{booking_id}/cancel"
    return await forward(request, "POST", path, actor=actor, body=body, if_match=if_match)


@router.post("/bookings/{booking_id}/reschedule", tags=["bookings"], summary="Move to a new window")
async def reschedule_booking(
    booking_id: Id, body: RescheduleIn, request: Request, actor: EdgeActor, if_match: IfMatch = None
) -> JSONResponse:
    await changeable_booking(request, actor, booking_id)
    path = f"/bookings/{booking_id}/reschedule"
    return await forward(request, "POST", path, actor=actor, body=body, if_match=if_match)


@router.post(
    "/bookings/{booking_id}/book-again",
    tags=["bookings"],
    status_code=201,
    summary="Same services, same technician preferred, a new window",
)
async def book_again(
    booking_id: Id,
    body: TimingIn,
    request: Request,
    actor: EdgeActor,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    await changeable_booking(request, actor, booking_id)
    return await forward(
        request,
        "POST",
        f"/bookings/{booking_id}/book-again",
        actor=actor,
        body=body,
        idempotency_key=idempotency_key,
    )
