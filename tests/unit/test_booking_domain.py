"""Booking rules as a specification: the state machine, quoting, booking windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.booking.domain import (
    ALLOWED,
    Booking,
    BookingStatus,
    CatalogueItem,
    IllegalTransition,
    check_window,
    quote,
)
from shared.errors import Conflict, Unprocessable
from shared.events.types import GeoPoint, PricedLine

NOW = datetime(2030, 5, 1, 8, 0, tzinfo=UTC)


def booking(status: BookingStatus = BookingStatus.REQUESTED) -> Booking:
    return Booking(
        booking_id="bk_1",
        customer_id="cus_1",
        region="lisbon",
        location=GeoPoint(lat=38.7, lon=-9.1),
        address="Rua 1",
        window_start=NOW,
        window_end=NOW + timedelta(hours=1),
        total=2500,
        currency="EUR",
        created_at=NOW,
        status=status,
        lines=[
            PricedLine(
                code="m", name="M", skill="nails", quantity=1, unit_price=2500, currency="EUR"
            )
        ],
    )


LEGAL = [(src, dst) for src, targets in ALLOWED.items() for dst in targets]
ILLEGAL = [(src, dst) for src in BookingStatus for dst in BookingStatus if dst not in ALLOWED[src]]


@pytest.mark.parametrize(("src", "dst"), LEGAL)
def test_legal_transition_changes_status_and_is_recorded(
    src: BookingStatus, dst: BookingStatus
) -> None:
    b = booking(src)
    b.move_to(dst, NOW, note="why")
    assert b.status is dst
    assert b.timeline[-1].status is dst
    assert b.timeline[-1].note == "why"


@pytest.mark.parametrize(("src", "dst"), ILLEGAL)
def test_illegal_transition_is_a_conflict_and_changes_nothing(
    src: BookingStatus, dst: BookingStatus
) -> None:
    b = booking(src)
    with pytest.raises(IllegalTransition) as raised:
        b.move_to(dst, NOW)
    assert isinstance(raised.value, Conflict)
    assert raised.value.status == 409
    assert b.status is src
    assert b.timeline == []


def test_terminal_states_allow_nothing() -> None:
    assert ALLOWED[BookingStatus.COMPLETED] == frozenset()
    assert ALLOWED[BookingStatus.CANCELLED] == frozenset()


CATALOGUE = {
    "nails.manicure": CatalogueItem(
        "nails.manicure", "Manicure", "nails", "lisbon", 2500, "EUR", 45
    ),
    "nails.pedicure": CatalogueItem(
        "nails.pedicure", "Pedicure", "nails", "lisbon", 3000, "EUR", 60
    ),
    "clean.porto": CatalogueItem("clean.porto", "Clean", "cleaning", "porto", 4000, "EUR", 120),
    "nails.gbp": CatalogueItem("nails.gbp", "Manicure", "nails", "lisbon", 2000, "GBP", 45),
}


def test_quote_prices_from_the_catalogue_times_quantity() -> None:
    q = quote(CATALOGUE, [("nails.manicure", 2), ("nails.pedicure", 1)], "lisbon")
    assert q.total == 2 * 2500 + 3000
    assert q.currency == "EUR"
    assert [(line.code, line.quantity, line.unit_price) for line in q.lines] == [
        ("nails.manicure", 2, 2500),
        ("nails.pedicure", 1, 3000),
    ]
    assert all(isinstance(line.unit_price, int) for line in q.lines)


@pytest.mark.parametrize(
    ("requested", "field", "words"),
    [
        ([("nope", 1)], "items.0.code", "unknown catalogue item"),
        ([("nails.manicure", 1), ("clean.porto", 1)], "items.1.code", "not sold in region"),
        ([("nails.manicure", 1), ("nails.manicure", 2)], "items.1.code", "listed twice"),
        ([], "items", "at least one item"),
        ([("nails.manicure", 1), ("nails.gbp", 1)], "items", "different currencies"),
    ],
)
def test_quote_refuses_what_the_catalogue_does_not_sell(
    requested: list[tuple[str, int]], field: str, words: str
) -> None:
    with pytest.raises(Unprocessable) as raised:
        quote(CATALOGUE, requested, "lisbon")
    assert raised.value.field == field
    assert words in raised.value.message


def test_a_window_in_the_future_within_limits_passes() -> None:
    check_window(NOW + timedelta(hours=1), NOW + timedelta(hours=3), NOW)


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [
        (NOW - timedelta(minutes=1), NOW + timedelta(hours=1), "window_start"),
        (NOW + timedelta(hours=2), NOW + timedelta(hours=1), "window_end"),
        (NOW + timedelta(hours=1), NOW + timedelta(hours=14), "window_end"),
        (NOW + timedelta(days=91), NOW + timedelta(days=91, hours=1), "window_start"),
        (datetime(2030, 5, 2, 9), datetime(2030, 5, 2, 10), "window_start"),
    ],
)
def test_bad_windows_are_refused(start: datetime, end: datetime, field: str) -> None:
    with pytest.raises(Unprocessable) as raised:
        check_window(start, end, NOW)
    assert raised.value.field == field
