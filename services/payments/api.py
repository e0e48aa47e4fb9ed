"""Payments' HTTP API: receipts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from services.payments.domain import Receipt
from services.payments.storage import Receipts
from shared.errors import NotFound
from shared.service import RuntimeDep

router = APIRouter()


@router.get("/receipts", tags=["receipts"], summary="The receipt of a booking")
async def receipt_for_booking(
    runtime: RuntimeDep, booking_id: Annotated[str, Query(min_length=1, max_length=64)]
) -> Receipt:
    receipt = await Receipts(runtime.db).by_booking(booking_id)
    if receipt is None:
        raise NotFound(f"no receipt for booking {booking_id} yet", field="booking_id")
    return receipt


@router.get("/receipts/{receipt_id}", tags=["receipts"])
async def get_receipt(
    receipt_id: Annotated[str, Path(min_length=1, max_length=64)], runtime: RuntimeDep
) -> Receipt:
    receipt = await Receipts(runtime.db).get(receipt_id)
    if receipt is None:
        raise NotFound(f"receipt {receipt_id} does not exist")
    return receipt
