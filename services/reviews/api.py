"""Reviews' HTTP API: review requests."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from services.reviews.domain import ReviewRequest
from services.reviews.storage import ReviewRequests
from shared.errors import NotFound
from shared.service import RuntimeDep

router = APIRouter()


@router.get(
    "/review-requests/{booking_id}", tags=["reviews"], summary="The review invitation of a booking"
)
async def get_review_request(
    booking_id: Annotated[str, Path(min_length=1, max_length=64)], runtime: RuntimeDep
) -> ReviewRequest:
    request = await ReviewRequests(runtime.db).get(booking_id)
    if request is None:
        raise NotFound(f"no review request for booking {booking_id} yet")
    return request
