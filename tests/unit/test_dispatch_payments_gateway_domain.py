"""Dispatch, payments and gateway rules as a specification."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.dispatch.domain import (
    Candidate,
    Technician,
    Visit,
    VisitStatus,
    choose,
    required_skills,
)
from services.gateway.domain import may_retry
from services.payments.domain import build_receipt
from shared.errors import Conflict, Unprocessable
from shared.events.types import GeoPoint, PricedLine

NOW = datetime(2030, 5, 1, 8, 0, tzinfo=UTC)


def line(
    code: str, skill: str = "nails", qty: int = 1, price: int = 1000, cur: str = "EUR"
) -> PricedLine:
    return PricedLine(
        code=code, name=code.title(), skill=skill, quantity=qty, unit_price=price, currency=cur
    )


def candidate(tid: str, skills: list[str], distance: float, active: bool = True) -> Candidate:
    tech = Technician(
        technician_id=tid,
        full_name=tid,
        badge_number=f"B-{tid}",
        store_id="s",
        skills=skills,
        location=GeoPoint(lat=0, lon=0),
        active=active,
    )
    return Candidate(technician=tech, distance_m=distance)


def test_nearest_qualified_active_technician_is_chosen() -> None:
    found = choose(
        [
            candidate("inactive", ["nails", "hair"], 10, active=False),
            candidate("half", ["nails"], 20),
            candidate("right", ["hair", "nails", "extra"], 30),
            candidate("farther", ["nails", "hair"], 40),
        ],
        ["nails", "hair"],
    )
    assert found is not None
    assert found.technician.technician_id == "right"


def test_nobody_qualified_means_none() -> None:
    assert choose([candidate("a", ["cleaning"], 1)], ["nails"]) is None
    assert choose([], ["nails"]) is None


def test_required_skills_are_distinct_and_sorted() -> None:
    assert required_skills([line("a", "nails"), line("b", "hair"), line("c", "nails")]) == [
        "hair",
        "nails",
    ]


def visit() -> Visit:
    return Visit(
        visit_id="vs_1",
        booking_id="bk_1",
        customer_id="c",
        technician_id="t",
        lines=[line("m", price=2500, qty=1), line("p", price=3000, qty=2)],
        assigned_at=NOW,
    )


def test_completing_records_booked_items_at_booked_prices() -> None:
    v = visit()
    done = v.complete([("p", 1), ("m", 3)], NOW)
    assert [(x.code, x.quantity, x.unit_price) for x in done] == [("p", 1, 3000), ("m", 3, 2500)]
    assert v.status is VisitStatus.COMPLETED
    assert v.completed_at == NOW
    assert v.performed == done


def test_an_unbooked_item_cannot_be_recorded() -> None:
    v = visit()
    with pytest.raises(Unprocessable) as raised:
        v.complete([("m", 1), ("upsell", 1)], NOW)
    assert raised.value.field == "performed.1.code"
    assert v.status is VisitStatus.ASSIGNED


def test_empty_completion_is_refused() -> None:
    with pytest.raises(Unprocessable):
        visit().complete([], NOW)


def test_a_visit_completes_once() -> None:
    v = visit()
    v.complete([("m", 1)], NOW)
    with pytest.raises(Conflict):
        v.complete([("m", 1)], NOW)


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
