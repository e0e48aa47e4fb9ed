"""The views the gateway composes for clients in one call (the rest of /v1 is `proxy.py`)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from services.gateway.domain import BookingView, ComplaintStatus
from services.gateway.security import EdgeActor
from services.gateway.upstream import Upstream, UpstreamError
from shared.schema import PathId

router = APIRouter(prefix="/v1")


def upstream(request: Request) -> Upstream:
    client: Upstream = request.app.state.upstream
    return client


@router.get(
    "/bookings/{booking_id}",
    tags=["bookings"],
    summary="A booking with its technician's identity card, its receipt's and complaints' states",
)
async def get_booking(
    booking_id: PathId, request: Request, response: Response, actor: EdgeActor
) -> BookingView:
    client = upstream(request)
    # Booking answers only a caller who may see the booking, and only what they may see;
    # payments and reviews check again that what they return is this caller's.
    found = await client.call("booking", "GET", f"/bookings/{booking_id}", headers=actor.headers())
    if found.status_code != 200:
        raise UpstreamError.from_response(found)
    if "etag" in found.headers:  # for If-Match on the booking's changes
        response.headers["ETag"] = found.headers["etag"]
    of_booking, caller = {"booking_id": booking_id}, actor.headers()
    receipt, complaints = await asyncio.gather(
        client.call("payments", "GET", "/receipts", params=of_booking, headers=caller),
        client.call("reviews", "GET", "/complaints", params=of_booking, headers=caller),
    )
    return BookingView(
        booking=found.json(),
        receipt=receipt.json() if receipt.status_code == 200 else None,
        complaints=[
            ComplaintStatus.model_validate(
                {k: c[k] for k in ("complaint_id", "category", "status", "tier")}
            )
            for c in (complaints.json() if complaints.status_code == 200 else [])
        ],
    )
