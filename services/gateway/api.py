"""The public /v1 API: validates at the edge, forwards to the owning service, composes views."""

from __future__ import annotations

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
from services.gateway.domain import BookingView
from services.gateway.upstream import Upstream, UpstreamError

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
    body: Any = None,
    params: dict[str, str] | None = None,
    **headers: str | None,
) -> JSONResponse:
    json = body.model_dump(mode="json") if body is not None else None
    response = await upstream(request).call(
        "booking", method, path, json=json, params=params, headers=_headers(**headers)
    )
    if response.status_code == status.HTTP_204_NO_CONTENT:
        return JSONResponse(status_code=204, content=None)
    return relay(response)


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
async def put_customer(customer_id: Id, body: ProfileIn, request: Request) -> JSONResponse:
    return await forward(request, "PUT", f"/customers/{customer_id}", body=body)


@router.get("/customers/{customer_id}", tags=["customers"], summary="A customer's profile")
async def get_customer(customer_id: Id, request: Request) -> JSONResponse:
    return await forward(request, "GET", f"/customers/{customer_id}")


@router.put(
    "/customers/{customer_id}/addresses/{address_id}",
    tags=["customers"],
    summary="Add or change an address",
)
async def put_address(
    customer_id: Id, address_id: Id, body: AddressIn, request: Request
) -> JSONResponse:
    return await forward(
        request, "PUT", f"/customers/{customer_id}/addresses/{address_id}", body=body
    )


@router.put(
    "/customers/{customer_id}/care-profile",
    tags=["customers"],
    summary="What the technician may read before the visit",
)
async def put_care_profile(customer_id: Id, body: CareProfile, request: Request) -> JSONResponse:
    return await forward(request, "PUT", f"/customers/{customer_id}/care-profile", body=body)


@router.get("/customers/{customer_id}/bookings", tags=["customers"], summary="The booking history")
async def booking_history(customer_id: Id, request: Request) -> JSONResponse:
    return await forward(request, "GET", f"/customers/{customer_id}/bookings")


# ----------------------------------------------------------------- bookings --
@router.post("/bookings/quote", tags=["bookings"], summary="Price a booking before confirming it")
async def quote_booking(body: BookingRequest, request: Request) -> JSONResponse:
    return await forward(request, "POST", "/bookings/quote", body=body)


@router.post("/bookings", tags=["bookings"], status_code=201, summary="Book a visit")
async def create_booking(
    body: BookingRequest, request: Request, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    return await forward(request, "POST", "/bookings", body=body, idempotency_key=idempotency_key)


@router.get("/bookings/{booking_id}", tags=["bookings"], summary="A booking with its receipt state")
async def get_booking(booking_id: Id, request: Request) -> BookingView:
    client = upstream(request)
    booking = await client.call("booking", "GET", f"/bookings/{booking_id}")
    if booking.status_code != 200:
        raise UpstreamError.from_response(booking)
    # Until sign-in lands at the gateway, the caller's identity headers pass through; the
    # payments service checks the receipt belongs to them.
    actor = {h: v for h, v in request.headers.items() if h.lower().startswith("x-actor-")}
    receipt = await client.call(
        "payments", "GET", "/receipts", params={"booking_id": booking_id}, headers=actor
    )
    return BookingView(
        booking=booking.json(), receipt=receipt.json() if receipt.status_code == 200 else None
    )


@router.post("/bookings/{booking_id}/cancel", tags=["bookings"], summary="Cancel a booking")
async def cancel_booking(
    booking_id: Id, request: Request, body: CancelIn | None = None, if_match: IfMatch = None
) -> JSONResponse:
    return await forward(
        request, "POST", f"/bookings/{booking_id}/cancel", body=body, if_match=if_match
    )


@router.post("/bookings/{booking_id}/reschedule", tags=["bookings"], summary="Move to a new window")
async def reschedule_booking(
    booking_id: Id, body: RescheduleIn, request: Request, if_match: IfMatch = None
) -> JSONResponse:
    return await forward(
        request, "POST", f"/bookings/{booking_id}/reschedule", body=body, if_match=if_match
    )


@router.post(
    "/bookings/{booking_id}/book-again",
    tags=["bookings"],
    status_code=201,
    summary="Same services, same technician preferred, a new window",
)
async def book_again(
    booking_id: Id, body: TimingIn, request: Request, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    return await forward(
        request,
        "POST",
        f"/bookings/{booking_id}/book-again",
        body=body,
        idempotency_key=idempotency_key,
    )
