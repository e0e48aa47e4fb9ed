"""The public /v1 API: forwards to the owning service and composes views."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse

from services.booking.api import BookingRequest
from services.gateway.domain import BookingView
from services.gateway.upstream import Upstream, UpstreamError

router = APIRouter(prefix="/v1")

Id = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


def upstream(request: Request) -> Upstream:
    client: Upstream = request.app.state.upstream
    return client


def relay(response: Any) -> JSONResponse:
    return JSONResponse(status_code=response.status_code, content=response.json())


@router.get("/catalogue/items", tags=["catalogue"], summary="The public price list")
async def catalogue(
    request: Request, region: Annotated[str | None, Query(max_length=64)] = None
) -> JSONResponse:
    params = {"region": region} if region else None
    return relay(await upstream(request).call("booking", "GET", "/catalogue/items", params=params))


@router.post("/bookings", tags=["bookings"], status_code=201, summary="Request a visit")
async def create_booking(
    body: BookingRequest,
    request: Request,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=8, max_length=128)
    ] = None,
) -> JSONResponse:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    response = await upstream(request).call(
        "booking", "POST", "/bookings", json=body.model_dump(mode="json"), headers=headers
    )
    return relay(response)


@router.get("/bookings/{booking_id}", tags=["bookings"], summary="A booking with its receipt state")
async def get_booking(booking_id: Id, request: Request) -> BookingView:
    client = upstream(request)
    booking = await client.call("booking", "GET", f"/bookings/{booking_id}")
    if booking.status_code != 200:
        raise UpstreamError.from_response(booking)
    receipt = await client.call("payments", "GET", "/receipts", params={"booking_id": booking_id})
    return BookingView(
        booking=booking.json(), receipt=receipt.json() if receipt.status_code == 200 else None
    )
