"""Payments and gateway rules as a specification."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.gateway.domain import may_retry
from services.payments.domain import build_receipt
from shared.errors import Unprocessable
from shared.events.types import PricedLine

NOW = datetime(2030, 5, 1, 8, 0, tzinfo=UTC)


def line(
    code: str, skill: str = "nails", qty: int = 1, price: int = 1000, cur: str = "EUR"
) -> PricedLine:
    return PricedLine(
        code=code, name=code.title(), skill=skill, quantity=qty, unit_price=price, currency=cur
    )


def test_receipt_lines_and_total_come_from_performed_items() -> None:
    receipt = build_receipt(
        booking_id="bk",
        customer_id="c",
        technician_id="t",
        performed=[line("m", price=2500, qty=2), line("p", price=300)],
        at=NOW,
    )
    assert [(r.code, r.quantity, r.amount) for r in receipt.lines] == [
        ("m", 2, 5000),
        ("p", 1, 300),
    ]
    assert receipt.total == 5300
    assert receipt.currency == "EUR"
    assert receipt.receipt_id.startswith("rc_")


def test_receipt_refuses_mixed_currencies_and_nothing() -> None:
    with pytest.raises(Unprocessable):
        build_receipt(
            booking_id="b",
            customer_id="c",
            technician_id="t",
            performed=[line("a"), line("b", cur="GBP")],
            at=NOW,
        )
    with pytest.raises(Unprocessable):
        build_receipt(booking_id="b", customer_id="c", technician_id="t", performed=[], at=NOW)


@pytest.mark.parametrize(
    ("method", "key", "expected"),
    [
        ("GET", None, True),
        ("put", None, True),
        ("DELETE", None, True),
        ("POST", None, False),
        ("POST", "k-12345678", True),
        ("PATCH", None, False),
    ],
)
def test_only_idempotent_calls_are_retried(method: str, key: str | None, expected: bool) -> None:
    assert may_retry(method, key) is expected
