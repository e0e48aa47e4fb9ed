"""Booking's pure rules: prices, surcharges, fees, windows and every state transition."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, time, timedelta

import pytest

from services.booking.commands import requested_event
from services.booking.domain import (
    ALLOWED,
    CANCELLABLE,
    LIFECYCLE,
    PAID,
    REOPENED,
    REOPENED_CASH,
    RESCHEDULABLE,
    WRITTEN_OFF,
    AddressSnapshot,
    Booking,
    BookingStatus,
    IllegalTransition,
    TechnicianIdentity,
    TimelineEntry,
    check_window,
    fingerprint,
    resolve_window,
)
from services.booking.pricing import (
    CatalogueItem,
    ItemKind,
    LineTerms,
    PriceVersion,
    Requested,
    ServiceHours,
    Timing,
    cancellation_fee,
    price_in_force,
    quote,
    store_for,
    terms_for,
)
from shared.auth import Actor, Role
from shared.errors import Conflict, Unprocessable
from shared.events.booking import BookingRequested, BookingRequestedV1
from shared.events.types import GeoPoint

S = BookingStatus
NOW = datetime(2030, 6, 10, 9, 0, tzinfo=UTC)  # summer: Lisbon is UTC+1
HOURS = ServiceHours(timezone="Europe/Lisbon", opens=time(8), closes=time(20))


def price(
    code: str = "nails.manicure", unit: int = 2500, days_ago: int = 30, **over: object
) -> PriceVersion:
    fields: dict[str, object] = {
        "code": code,
        "region": "lisbon",
        "unit_price": unit,
        "currency": "EUR",
        "effective_from": NOW - timedelta(days=days_ago),
        "after_hours_surcharge": 500,
        "urgent_surcharge": 1500,
        "cancellation_fee": 1000,
        "free_cancellation_hours": 24,
    }
    return PriceVersion.model_validate(fields | over)


def item(code: str = "nails.manicure", kind: ItemKind = ItemKind.SERVICE) -> CatalogueItem:
    service = kind is ItemKind.SERVICE
    return CatalogueItem(
        code=code,
        kind=kind,
        name=code.title(),
        category="nails",
        duration_minutes=45 if service else 0,
        skill="nails" if service else None,
        certificate="nail-hygiene" if service else None,
    )


def terms(*lines: tuple[str, int]) -> list[LineTerms]:
    codes = [code for code, _ in lines]
    items = {
        c: item(c, ItemKind.PRODUCT if c.startswith("product") else ItemKind.SERVICE) for c in codes
    }
    prices = {c: [price(c)] for c in codes}
    return terms_for(items, prices, [Requested(c, q) for c, q in lines], "lisbon", NOW)


def booking(status: BookingStatus = S.REQUESTED, start: datetime | None = None) -> Booking:
    window_start = start or NOW + timedelta(days=3)
    t = terms(("nails.manicure", 1))
    return Booking(
        booking_id="bk_1",
        customer_id="cus_1",
        region="lisbon",
        address=AddressSnapshot(
            address_id="ad_home", line="Rua Augusta 1", location=GeoPoint(lat=38.7, lon=-9.1)
        ),
        timing=Timing.WINDOW,
        window_start=window_start,
        window_end=window_start + timedelta(hours=2),
        terms=t,
        quote=quote(t, window_start, after_hours=False, urgent=False),
        status=status,
        timeline=[TimelineEntry(status=status, at=NOW)],
        created_at=NOW,
    )


def tech(tid: str = "tech_1", badge: str = "LX-1") -> TechnicianIdentity:
    return TechnicianIdentity(technician_id=tid, name="Marta Sousa", badge_number=badge)


# ------------------------------------------------------------------ prices --
def test_price_in_force_is_the_latest_version_already_effective() -> None:
    old, new, future = (
        price(unit=2000, days_ago=60),
        price(unit=2500, days_ago=1),
        price(unit=3000, days_ago=-5),
    )
    assert price_in_force([future, old, new], NOW) == new
    assert price_in_force([future, old], NOW) == old
    assert price_in_force([future], NOW) is None
    assert price_in_force([], NOW) is None
    assert price_in_force([future, new], NOW + timedelta(days=5)) == future


def test_terms_resolve_each_item_to_its_regional_price_and_duration() -> None:
    t = terms(("nails.manicure", 2), ("product.polish", 1))
    assert [(x.code, x.quantity, x.price.unit_price) for x in t] == [
        ("nails.manicure", 2, 2500),
        ("product.polish", 1, 2500),
    ]
    assert t[0].duration_minutes == 90
    assert t[1].duration_minutes == 0


@pytest.mark.parametrize(
    ("requested", "prices", "field", "words"),
    [
        ([Requested("nope", 1)], {}, "items.0.code", "unknown"),
        ([Requested("nails.manicure", 1)], {}, "items.0.code", "not sold in region"),
        (
            [Requested("nails.manicure", 1), Requested("nails.manicure", 1)],
            None,
            "items.1.code",
            "twice",
        ),
        ([Requested("nails.manicure", 0)], None, "items.0.quantity", "between 1 and 20"),
        ([Requested("nails.manicure", 21)], None, "items.0.quantity", "between 1 and 20"),
        ([], None, "items", "at least one item"),
        ([Requested("product.polish", 1)], None, "items", "service item"),
    ],
)
def test_terms_refuse_what_the_catalogue_does_not_sell(
    requested: list[Requested],
    prices: dict[str, list[PriceVersion]] | None,
    field: str,
    words: str,
) -> None:
    items = {"nails.manicure": item(), "product.polish": item("product.polish", ItemKind.PRODUCT)}
    known = prices if prices is not None else {c: [price(c)] for c in items}
    with pytest.raises(Unprocessable) as raised:
        terms_for(items, known, requested, "lisbon", NOW)
    assert raised.value.field == field
    assert words in raised.value.message


def test_items_priced_in_two_currencies_cannot_share_a_booking() -> None:
    items = {"a": item("a"), "b": item("b")}
    prices = {"a": [price("a")], "b": [price("b", currency="GBP")]}
    with pytest.raises(Unprocessable, match="currencies"):
        terms_for(items, prices, [Requested("a", 1), Requested("b", 1)], "lisbon", NOW)


def test_a_visit_is_one_stores_its_own_items_name_it_else_the_store_the_customer_asked() -> None:
    platform, own = (
        item("nails.manicure"),
        item("salon.facial").model_copy(update={"store_id": "st_a"}),
    )
    others = item("salon.peel").model_copy(update={"store_id": "st_b"})
    items = {i.code: i for i in (platform, own, others)}
    just = [Requested("nails.manicure", 1)]
    with_own = [*just, Requested("salon.facial", 1)]
    assert store_for(items, just, None) is None  # anyone qualified
    assert store_for(items, just, "st_b") == "st_b"  # the store whose card they hold
    assert store_for(items, with_own, None) == "st_a"
    assert store_for(items, with_own, "st_a") == "st_a"
    with pytest.raises(Unprocessable) as raised:
        store_for(items, with_own, "st_b")
    assert raised.value.field == "store_id"
    assert "'salon.facial' is st_a's own service" in raised.value.message
    with pytest.raises(Unprocessable) as raised:
        store_for(items, [*with_own, Requested("salon.peel", 1)], None)
    assert raised.value.field == "items"
    assert "book each store's items separately" in raised.value.message


def test_a_booking_with_no_store_is_told_in_version_1_so_consumers_from_before_read_it() -> None:
    plain = requested_event(booking())
    assert (type(plain), plain.schema_version) == (BookingRequestedV1, 1)
    with_store = requested_event(booking().model_copy(update={"store_id": "st_a"}))
    assert isinstance(with_store, BookingRequested)
    assert (with_store.schema_version, with_store.store_id) == (2, "st_a")


def test_a_store_reads_a_booking_made_with_it_and_no_other_store_does() -> None:
    b = booking().model_copy(update={"store_id": "st_a"})
    a_store = Actor(role=Role.STORE, subject="m@a", store_id="st_a")
    another = Actor(role=Role.STORE, subject="m@b", store_id="st_b")
    assert b.readable_by(a_store)
    assert not b.address_visible_to(a_store)
    assert not b.readable_by(another)
    assert not booking().readable_by(a_store)  # booked with no store, nobody assigned yet


def test_quote_totals_integer_minor_units_with_itemised_surcharges() -> None:
    t = terms(("nails.manicure", 2), ("product.polish", 1))
    plain = quote(t, NOW, after_hours=False, urgent=False)
    late = quote(t, NOW, after_hours=True, urgent=False)
    urgent = quote(t, NOW, after_hours=False, urgent=True)
    assert plain.total == 2 * 2500 + 2500
    assert [line.surcharge for line in plain.lines] == [0, 0]
    assert [line.surcharge for line in late.lines] == [500, 500]
    assert late.total == 2 * 3000 + 3000
    assert urgent.total == 2 * 4000 + 4000
    assert isinstance(urgent.total, int)
    assert [line.kind for line in plain.lines] == ["service", "product"]


def test_cancellation_is_free_until_the_longest_cutoff_then_costs_every_lines_fee() -> None:
    items = {"a": item("a"), "b": item("b")}
    prices = {
        "a": [price("a", free_cancellation_hours=12, cancellation_fee=300)],
        "b": [price("b", free_cancellation_hours=48, cancellation_fee=700)],
    }
    start = NOW + timedelta(days=5)
    q = quote(
        terms_for(items, prices, [Requested("a", 1), Requested("b", 1)], "lisbon", NOW),
        start,
        after_hours=False,
        urgent=False,
    )
    assert q.free_cancellation_until == start - timedelta(hours=48)
    assert cancellation_fee(q, start - timedelta(hours=49)) == 0
    assert cancellation_fee(q, start - timedelta(hours=48)) == 1000
    assert cancellation_fee(q, start - timedelta(hours=1)) == 1000


# ---------------------------------------------------------- service hours --
@pytest.mark.parametrize(
    ("start_utc", "end_utc", "inside"),
    [
        (time(9, 0), time(11, 0), True),  # 10:00-12:00 in Lisbon (UTC+1 in June)
        (time(6, 30), time(8, 0), False),  # 07:30 local: before opening
        (time(17, 0), time(19, 0), True),  # ends exactly at closing, 20:00 local
        (time(18, 0), time(20, 0), False),  # 21:00 local: after closing
    ],
)
def test_service_hours_are_read_in_the_regions_time_zone(
    start_utc: time, end_utc: time, inside: bool
) -> None:
    day = NOW.date()
    start = datetime.combine(day, start_utc, UTC)
    end = datetime.combine(day, end_utc, UTC)
    assert HOURS.covers(start, end) is inside


def test_a_window_across_midnight_is_after_hours() -> None:
    start = datetime(2030, 6, 10, 22, 0, tzinfo=UTC)
    assert HOURS.covers(start, start + timedelta(hours=4)) is False


# ---------------------------------------------------------------- windows --
@pytest.mark.parametrize(
    ("start", "end", "field"),
    [
        (NOW - timedelta(hours=1), NOW + timedelta(hours=1), "window_start"),
        (NOW + timedelta(days=1), NOW + timedelta(days=1) - timedelta(hours=1), "window_end"),
        (NOW + timedelta(days=1), NOW + timedelta(days=1, minutes=20), "window_end"),
        (NOW + timedelta(days=1), NOW + timedelta(days=1, hours=13), "window_end"),
        (NOW + timedelta(days=91), NOW + timedelta(days=91, hours=2), "window_start"),
    ],
)
def test_bad_windows_are_refused_naming_the_field(
    start: datetime, end: datetime, field: str
) -> None:
    with pytest.raises(Unprocessable) as raised:
        check_window(start, end, NOW)
    assert raised.value.field == field


def test_asap_and_urgent_choose_their_own_window_and_take_none() -> None:
    start, end, late = resolve_window(Timing.ASAP, None, None, NOW, HOURS)
    assert (start, end) == (NOW, NOW + timedelta(hours=3))
    assert late is False  # 10:00-13:00 local
    start, end, late = resolve_window(Timing.URGENT, None, None, NOW.replace(hour=23), HOURS)
    assert end - start == timedelta(hours=2)
    assert late is False  # urgent carries its own surcharge instead
    night = NOW.replace(hour=21)
    assert resolve_window(Timing.ASAP, None, None, night, HOURS)[2] is True
    with pytest.raises(Unprocessable) as raised:
        resolve_window(
            Timing.ASAP, NOW + timedelta(days=1), NOW + timedelta(days=1, hours=2), NOW, HOURS
        )
    assert raised.value.field == "window_start"
    with pytest.raises(Unprocessable):
        resolve_window(Timing.WINDOW, None, None, NOW, HOURS)


# ------------------------------------------------------------ transitions --
PAIRS = list(itertools.product(S, S))


@pytest.mark.parametrize(("current", "target"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_move_to_allows_exactly_the_legal_transitions(
    current: BookingStatus, target: BookingStatus
) -> None:
    b = booking(current)
    if target in ALLOWED[current]:
        b.move_to(target, NOW, "ok")
        assert b.status is target
        assert b.timeline[-1] == TimelineEntry(status=target, at=NOW, note="ok")
    else:
        before = b.model_copy(deep=True)
        with pytest.raises(IllegalTransition) as raised:
            b.move_to(target, NOW)
        assert isinstance(raised.value, Conflict)  # answered 409
        assert b == before


def test_terminal_states_allow_nothing() -> None:
    assert ALLOWED[S.CANCELLED] == frozenset()
    assert ALLOWED[S.CLOSED] == frozenset()


def test_facts_move_forward_may_skip_and_stale_or_repeated_ones_change_nothing() -> None:
    b = booking(S.ASSIGNED)
    assert b.observe(S.EN_ROUTE, NOW) is True
    assert b.observe(S.COMPLETED, NOW) is True  # arrival overtaken by completion
    assert b.observe(S.ARRIVED, NOW) is False
    assert b.observe(S.COMPLETED, NOW) is False
    assert [e.status for e in b.timeline] == [S.ASSIGNED, S.EN_ROUTE, S.COMPLETED]
    gone = booking(S.CANCELLED)
    assert gone.observe(S.ASSIGNED, NOW) is False
    assert gone.status is S.CANCELLED


def test_payment_closes_the_booking_and_a_write_off_taken_back_then_paid_is_told_after() -> None:
    paid = booking(S.RECEIPT_SIGNED)
    assert paid.settle(NOW, PAID) is True
    assert (paid.status, paid.timeline[-1].note) == (S.CLOSED, PAID)
    # Paid is the last word: nothing is reopened, repeated or written off after it.
    assert not any(paid.settle(NOW, note) for note in (PAID, REOPENED, REOPENED_CASH, WRITTEN_OFF))
    assert len(paid.timeline) == 2

    b = booking(S.RECEIPT_SIGNED)
    assert b.settle(NOW, REOPENED) is False  # nothing written off to take back
    assert b.settle(NOW, WRITTEN_OFF) is True
    assert b.settle(NOW, WRITTEN_OFF) is False  # repeated
    later = [NOW + timedelta(days=d) for d in (1, 2, 3, 4)]
    assert b.settle(later[0], REOPENED) is True
    assert b.settle(later[0], REOPENED) is False  # repeated
    assert b.settle(later[0], REOPENED_CASH) is False  # reopened once, one way
    assert b.settle(later[1], WRITTEN_OFF) is True  # written off again
    assert b.settle(later[2], REOPENED_CASH) is True  # the technician holds the cash
    assert b.settle(later[3], PAID) is True
    assert b.status is S.CLOSED
    assert [(e.status, e.at, e.note) for e in b.timeline[1:]] == [
        (S.CLOSED, NOW, WRITTEN_OFF),
        (S.CLOSED, later[0], REOPENED),
        (S.CLOSED, later[1], WRITTEN_OFF),
        (S.CLOSED, later[2], REOPENED_CASH),
        (S.CLOSED, later[3], PAID),
    ]
    gone = booking(S.CANCELLED)
    assert not any(gone.settle(NOW, note) for note in (PAID, WRITTEN_OFF, REOPENED))
    assert gone.timeline == booking(S.CANCELLED).timeline


def test_paid_straight_after_a_write_off_is_told_though_the_reversal_never_came() -> None:
    # Payments takes money only for a reopened receipt: a reversal this booking missed (a
    # service replaced while it was published) must not leave "written off" on a paid visit.
    b = booking(S.RECEIPT_SIGNED)
    assert b.settle(NOW, WRITTEN_OFF) is True
    assert b.settle(NOW + timedelta(days=1), PAID) is True
    assert [e.note for e in b.timeline[-2:]] == [WRITTEN_OFF, PAID]


def test_assign_then_reassign_reports_the_replaced_technician() -> None:
    b = booking()
    assert b.assign(tech(), NOW) is None
    assert b.status is S.ASSIGNED
    assert b.assign(tech(), NOW) is None  # the same one again: nothing happens
    assert len(b.timeline) == 2
    previous = b.assign(tech("tech_2", "LX-2"), NOW)
    assert previous == tech()
    assert b.technician == tech("tech_2", "LX-2")
    assert "LX-1 to LX-2" in (b.timeline[-1].note or "")


def test_the_same_technician_with_a_new_card_is_what_the_customer_checks_at_the_door() -> None:
    b = booking()
    b.assign(tech(), NOW)
    assert b.details_changed(tech().model_copy(update={"rating": 4.8}), NOW) is False
    assert (b.technician, len(b.timeline)) == (tech(), 2)  # a rating is no news at the door
    assert b.details_changed(tech("tech_2", "LX-9"), NOW) is False  # not who is coming
    assert b.details_changed(tech(badge="LX-9"), NOW) is True  # a new work card
    assert (b.status, b.technician) == (S.ASSIGNED, tech(badge="LX-9"))
    assert b.timeline[-1].note == "technician's details updated (badge LX-9)"
    # Nothing to show once the visit is cancelled (nor moved: the status stays as it is).
    cancelled = booking(start=NOW + timedelta(days=3))
    cancelled.assign(tech(), NOW)
    cancelled.cancel(NOW, "plans changed")
    assert cancelled.details_changed(tech(badge="LX-9"), NOW) is False
    assert (cancelled.status, cancelled.technician) == (S.CANCELLED, tech())


def test_a_released_technician_loses_the_booking_at_once_and_the_next_is_told_as_a_change() -> None:
    b = booking()
    b.assign(tech(), NOW)
    assert b.release("tech_other", NOW) is False  # stale: somebody else's
    assert b.release("tech_1", NOW) is True
    assert (b.status, b.technician) == (S.REQUESTED, None)
    assert "LX-1 is no longer coming" in (b.timeline[-1].note or "")
    assert not b.serves(Actor(role=Role.TECHNICIAN, subject="tech_1"))
    assert b.release("tech_1", NOW) is False  # repeated
    assert b.assign(tech("tech_2", "LX-2"), NOW, replacing="LX-1") is None
    assert (b.status, b.timeline[-1].note) == (S.ASSIGNED, "technician changed from LX-1 to LX-2")


def test_a_release_waiting_for_a_new_window_keeps_it_and_one_at_the_door_is_too_late() -> None:
    b = booking()
    b.assign(tech(), NOW)
    b.reschedule(NOW + timedelta(days=4), NOW + timedelta(days=4, hours=2), HOURS, NOW)
    assert b.release("tech_1", NOW) is True
    assert (b.status, b.technician) == (S.RESCHEDULED, None)
    arrived = booking(S.ARRIVED)
    arrived.technician = tech()
    assert arrived.release("tech_1", NOW) is False
    assert arrived.technician == tech()


def test_the_same_technician_reconfirmed_after_a_reschedule_assigns_again() -> None:
    b = booking()
    b.assign(tech(), NOW)
    b.reschedule(NOW + timedelta(days=4), NOW + timedelta(days=4, hours=2), HOURS, NOW)
    assert b.status is S.RESCHEDULED
    assert b.assign(tech(), NOW) is None
    assert b.timeline[-1].status is S.ASSIGNED


def test_cancel_charges_nothing_before_the_cutoff_and_the_fee_after() -> None:
    early = booking(start=NOW + timedelta(days=3))
    assert early.cancel(NOW, "plans changed") == 0
    assert early.status is S.CANCELLED
    late = booking(start=NOW + timedelta(hours=5))
    assert late.cancel(NOW, "plans changed") == 1000
    assert late.cancellation_fee == 1000


def test_a_technician_late_makes_cancelling_free_and_is_told_once() -> None:
    b = booking(S.ASSIGNED, start=NOW + timedelta(hours=1))
    assert b.technician_late(NOW)
    assert not b.technician_late(NOW)  # told already
    assert b.timeline[-1].note == "the technician is late: cancelling is free"
    assert b.status is S.ASSIGNED
    assert b.cancel(NOW, "nobody came") == 0
    there = booking(S.ARRIVED, start=NOW + timedelta(hours=1))
    assert not there.technician_late(NOW)  # arrived meanwhile: nothing changes
    assert there.technician_late_at is None
    # Moved to another day: late for the old window, the new one's cancellation is charged
    # again (the cut-off stays passed); late while the move waits for dispatch, it is free.
    moved = booking(S.ASSIGNED, start=NOW + timedelta(hours=1))
    assert moved.technician_late(NOW)
    moved.reschedule(NOW + timedelta(days=2), NOW + timedelta(days=2, hours=2), HOURS, NOW)
    assert moved.technician_late_at is None
    assert moved.cancel(NOW, "plans changed") == 1000
    waiting = booking(S.ASSIGNED, start=NOW + timedelta(hours=1))
    waiting.reschedule(NOW + timedelta(days=2), NOW + timedelta(days=2, hours=2), HOURS, NOW)
    assert waiting.technician_late(NOW)
    assert waiting.cancel(NOW, "nobody came") == 0


def test_a_move_after_the_cutoff_keeps_cancelling_charged_and_one_before_moves_the_cutoff() -> None:
    """Moving a visit five hours away to next week once cancelling costs the fee does not
    make cancelling free again (the technician's slot is lost all the same); moving it
    before its cut-off brings the new window's cut-off."""
    late = booking(start=NOW + timedelta(hours=5))
    passed = late.quote.free_cancellation_until
    late.reschedule(NOW + timedelta(days=7), NOW + timedelta(days=7, hours=2), HOURS, NOW)
    assert late.quote.free_cancellation_until == passed
    assert late.cancel(NOW + timedelta(minutes=5), "plans changed") == 1000
    early = booking(start=NOW + timedelta(days=3))
    moved_to = NOW + timedelta(days=7)
    early.reschedule(moved_to, moved_to + timedelta(hours=2), HOURS, NOW)
    assert early.quote.free_cancellation_until == moved_to - timedelta(hours=24)
    assert early.cancel(NOW + timedelta(days=5), "plans changed") == 0


@pytest.mark.parametrize("status", sorted(set(S) - CANCELLABLE))
def test_cancel_is_refused_once_the_visit_is_under_way_or_over(status: BookingStatus) -> None:
    b = booking(status)
    with pytest.raises(IllegalTransition):
        b.cancel(NOW, "too late")
    assert b.status is status


def on_visit(status: BookingStatus, start: datetime | None = None) -> Booking:
    b = booking(start=start)
    b.assign(tech(), NOW)
    b.status = status
    return b


THEIR_TECHNICIAN = Actor(role=Role.TECHNICIAN, subject="tech_1")


@pytest.mark.parametrize("status", LIFECYCLE)
def test_the_technician_sees_the_home_from_accepting_until_the_visit_is_done(
    status: BookingStatus,
) -> None:
    """Not while the receipt waits for a signature or the money: that may never end."""
    on_the_way_or_inside = {S.ASSIGNED, S.EN_ROUTE, S.ARRIVED, S.IDENTITY_CONFIRMED, S.IN_SERVICE}
    seen = on_visit(status).address_visible_to(THEIR_TECHNICIAN)
    assert seen is (status in on_the_way_or_inside)
    assert on_visit(status).address_visible_to(Actor(role=Role.TECHNICIAN, subject="x")) is False


def test_a_visit_a_safety_alert_stopped_hides_the_home_and_is_cancelled_free_not_moved() -> None:
    late = NOW + timedelta(hours=5)  # past the free cut-off: a fee, were it not for the alert
    at_door, before = on_visit(S.ARRIVED, late), on_visit(S.ASSIGNED, late)
    for b in (at_door, before):
        assert b.halt(NOW, "not_the_person") is True
        assert b.halt(NOW, "not_the_person") is False  # once
        assert b.address_visible_to(THEIR_TECHNICIAN) is False
        assert "not the one shown" in (b.timeline[-1].note or "")
    with pytest.raises(IllegalTransition, match="safety alert"):
        before.reschedule(NOW + timedelta(days=4), NOW + timedelta(days=4, hours=2), HOURS, NOW)
    assert before.status is S.ASSIGNED
    for b in (at_door, before):
        assert b.cancel(NOW, "not the person shown") == 0
        assert b.status is S.CANCELLED
    done = on_visit(S.COMPLETED)
    assert done.halt(NOW, "wrong_code_lockout") is False  # over already: nothing to stop


def test_reschedule_keeps_booked_prices_and_recomputes_the_after_hours_surcharge() -> None:
    b = booking()
    late = datetime(2030, 6, 15, 20, 0, tzinfo=UTC)  # 21:00 in Lisbon
    b.reschedule(late, late + timedelta(hours=1), HOURS, NOW)
    assert b.status is S.RESCHEDULED
    assert b.quote.lines[0].unit_price == 2500
    assert b.quote.lines[0].surcharge == 500
    assert b.quote.after_hours is True
    assert b.window_start == late


def test_a_move_dispatch_refused_puts_the_booking_back_on_its_window_and_prices() -> None:
    b = on_visit(S.ASSIGNED)
    first = (b.window_start, b.window_end, b.quote)
    late = datetime(2030, 6, 15, 20, 0, tzinfo=UTC)  # 21:00 in Lisbon: a surcharge
    b.reschedule(late, late + timedelta(hours=1), HOURS, NOW)
    b.reschedule(late + timedelta(days=1), late + timedelta(days=1, hours=1), HOURS, NOW)
    b.keep_window(
        first[0],
        first[1],
        lines=first[2].lines,
        stage=S.IN_SERVICE,
        at=NOW,
        reason="the service had already begun",
    )
    assert (b.window_start, b.window_end, b.quote) == first  # the first, not the one between
    assert b.status is S.IN_SERVICE
    assert b.rescheduled_from is None
    assert b.timeline[-1].note == (
        "not moved: the service had already begun; the visit keeps its window"
    )
    with pytest.raises(IllegalTransition, match="no new window waits"):
        b.keep_window(first[0], first[1], lines=first[2].lines, stage=S.ARRIVED, at=NOW, reason="")


def test_a_move_refused_after_a_safety_alert_stops_the_booking_there() -> None:
    b = on_visit(S.ASSIGNED)
    start, end, lines = b.window_start, b.window_end, b.quote.lines
    b.reschedule(NOW + timedelta(days=4), NOW + timedelta(days=4, hours=2), HOURS, NOW)
    b.keep_window(
        start,
        end,
        lines=lines,
        stage=S.ARRIVED,
        at=NOW,
        reason="a safety alert had stopped the visit",
        halted_by="wrong_code_lockout",
    )
    assert b.status is S.ARRIVED
    assert b.halted_at == NOW
    assert b.address_visible_to(THEIR_TECHNICIAN) is False
    assert b.cancel(NOW, "stopped at the door") == 0


def test_a_move_dispatch_refused_after_taking_an_earlier_one_carries_that_ones_prices() -> None:
    """Moved twice; dispatch had taken the first move before the second came too late."""
    b = on_visit(S.ASSIGNED)
    late = datetime(2030, 6, 15, 20, 0, tzinfo=UTC)
    b.reschedule(late, late + timedelta(hours=1), HOURS, NOW)
    evening = b.quote.lines
    b.reschedule(NOW + timedelta(days=4), NOW + timedelta(days=4, hours=2), HOURS, NOW)
    b.keep_window(
        late, late + timedelta(hours=1), lines=evening, stage=S.EN_ROUTE, at=NOW, reason="set off"
    )
    assert b.window_start == late
    assert b.total == 3000  # 25.00 and the 5.00 evening surcharge


@pytest.mark.parametrize("status", sorted(set(S) - RESCHEDULABLE))
def test_reschedule_is_refused_once_the_technician_is_on_the_way(status: BookingStatus) -> None:
    b = booking(status)
    with pytest.raises(IllegalTransition):
        b.reschedule(NOW + timedelta(days=4), NOW + timedelta(days=4, hours=2), HOURS, NOW)


def test_reschedule_into_the_past_is_refused() -> None:
    b = booking()
    with pytest.raises(Unprocessable) as raised:
        b.reschedule(NOW - timedelta(hours=2), NOW - timedelta(hours=1), HOURS, NOW)
    assert raised.value.field == "window_start"
    assert b.status is S.REQUESTED


def test_lifecycle_is_the_forward_path_of_a_visit() -> None:
    assert LIFECYCLE[0] is S.REQUESTED
    assert LIFECYCLE[-1] is S.CLOSED
    for earlier, later in itertools.pairwise(LIFECYCLE[1:]):
        assert later in ALLOWED[earlier]


def test_fingerprint_ignores_key_order_but_not_content() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
