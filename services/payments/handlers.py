"""How payments reacts to other services' events."""

from __future__ import annotations

from services.payments.domain import build_receipt
from services.payments.storage import Receipts
from shared.consumer import Handlers
from shared.events.dispatch import ServiceCompleted
from shared.events.payments import ReceiptIssued
from shared.outbox import Transaction
from shared.time import utcnow

handlers = Handlers()


@handlers.on(ServiceCompleted)
async def issue_receipt(tx: Transaction, event: ServiceCompleted) -> None:
    receipts = Receipts(tx.db)
    if await receipts.by_booking(event.booking_id, tx.session):
        return  # issued already
    receipt = build_receipt(
        booking_id=event.booking_id,
        customer_id=event.customer_id,
        technician_id=event.technician_id,
        performed=event.lines,
        at=utcnow(),
    )
    await receipts.insert(receipt, tx.session)
    tx.emit(
        ReceiptIssued(
            receipt_id=receipt.receipt_id,
            booking_id=receipt.booking_id,
            customer_id=receipt.customer_id,
            line_count=len(receipt.lines),
            total=receipt.total,
            currency=receipt.currency,
        )
    )
