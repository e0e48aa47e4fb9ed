"""Receipt rules, free of I/O: a receipt is built only from booked, performed items."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from shared.errors import Unprocessable
from shared.events.types import PricedLine


class ReceiptStatus(StrEnum):
    ISSUED = "issued"  # waiting for the customer's signature


class ReceiptLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    name: str
    quantity: int
    unit_price: int
    amount: int


class Receipt(BaseModel):
    model_config = ConfigDict(extra="forbid")

    receipt_id: str
    booking_id: str
    customer_id: str
    technician_id: str
    lines: list[ReceiptLine]
    total: int
    currency: str
    status: ReceiptStatus = ReceiptStatus.ISSUED
    issued_at: datetime


def build_receipt(
    *,
    booking_id: str,
    customer_id: str,
    technician_id: str,
    performed: Sequence[PricedLine],
    at: datetime,
) -> Receipt:
    if not performed:
        raise Unprocessable("a receipt needs at least one performed item")
    currencies = {line.currency for line in performed}
    if len(currencies) != 1:
        raise Unprocessable("performed items are priced in different currencies")
    lines = [
        ReceiptLine(
            code=p.code, name=p.name, quantity=p.quantity, unit_price=p.unit_price, amount=p.amount
        )
        for p in performed
    ]
    return Receipt(
        receipt_id=f"rc_{uuid.uuid4().hex}",
        booking_id=booking_id,
        customer_id=customer_id,
        technician_id=technician_id,
        lines=lines,
        total=sum(line.amount for line in lines),
        currency=currencies.pop(),
        issued_at=at,
    )
