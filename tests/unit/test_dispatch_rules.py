"""Dispatch's rules as a specification: who may be sent, ranking, matching, the visit, codes."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from services.dispatch.domain import (
    AlertKind,
    CodeResult,
    Commitment,
    Need,
    OfferStatus,
    Technician,
    Visit,
    VisitStatus,
    code_digest,
    code_matches,
    cost_km,
    fits_calendar,
    match_greedy,
    match_optimal,
    point_in_polygon,
    travel_time,
    visit_code,
    why_not,
)
from shared.errors import Conflict, Forbidden, Locked, Unprocessable
from shared.events.types import GeoPoint, GeoPolygon, PricedLine

# Wednesday 2030-05-01, 10:00-12:00 in Lisbon (UTC+1 in summer).
START = datetime(2030, 5, 1, 9, 0, tzinfo=UTC)
END = START + timedelta(hours=2)
HOME = GeoPoint(lat=38.7223, lon=-9.1393)
LISBON_BOX = GeoPolygon(
    type="Polygon",
    coordinates=[[(-9.35, 38.60), (-9.00, 38.60), (-9.00, 38.85), (-9.35, 38.85), (-9.35, 38.60)]],
)
NEED = Need(location=HOME, start=START, end=END, skills=("nails",), certificates=("gel",))


def tech(**over: Any) -> Technician:
    data: dict[str, Any] = {
        "technician_id": "t1",
        "full_name": "Marta Sousa",
        "badge_number": "LX-1001",
        "store_id": "store_chiado",
        "skills": ["nails"],
        "certificates": [{"name": "gel", "issuer": "Academy", "expires_on": "2030-12-31"}],
        "insurance": {"insurer": "F", "policy_number": "P", "expires_on": "2030-12-31"},
        "areas": [LISBON_BOX.model_dump()],
        "timezone": "Europe/Lisbon",
        "shifts": [{"weekday": 2, "start": "08:00", "end": "18:00"}],
        "location": {"lat": 38.71, "lon": -9.14},
        **over,
    }
    return Technician.model_validate(data)


# ------------------------------------------------------------------ who may go --
def test_a_fit_technician_may_go() -> None:
    assert why_not(tech(), NEED, []) is None


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"status": "suspended"}, "suspended"),
        ({"skills": ["cleaning"]}, "lacks skill nails"),
        ({"certificates": []}, "no valid certificate gel"),
        (
            {"certificates": [{"name": "gel", "issuer": "A", "expires_on": "2030-04-30"}]},
            "no valid certificate gel",
        ),
        ({"insurance": None}, "not insured"),
        (
            {"insurance": {"insurer": "F", "policy_number": "P", "expires_on": "2030-04-01"}},
            "not insured",
        ),
        (
            {
                "areas": [
                    {
                        "type": "Polygon",
                        "coordinates": [
                            [[-8.75, 41.05], [-8.5, 41.05], [-8.5, 41.25], [-8.75, 41.05]]
                        ],
                    }
                ]
            },
            "does not serve this address",
        ),
        ({"shifts": [{"weekday": 3, "start": "08:00", "end": "18:00"}]}, "not on shift"),
        ({"shifts": [{"weekday": 2, "start": "11:00", "end": "18:00"}]}, "not on shift"),
        ({"exceptions": [{"on": "2030-05-01", "kind": "leave"}]}, "not on shift"),
        (
            {
                "exceptions": [
                    {"on": "2030-05-01", "kind": "leave", "start": "11:30", "end": "13:00"}
                ]
            },
            "not on shift",
        ),
    ],
)
def test_each_rule_keeps_an_unfit_technician_away(over: dict[str, Any], reason: str) -> None:
    found = why_not(tech(**over), NEED, [])
    assert found is not None
    assert found.startswith(reason)


def test_a_visit_booked_with_a_store_is_for_its_technicians_alone() -> None:
    theirs = dataclasses.replace(NEED, store_id="store_chiado")
    assert why_not(tech(), theirs, []) is None
    assert why_not(tech(store_id="store_baixa"), theirs, []) == (
        "not one of store_chiado's technicians (the booking is that store's)"
    )
    assert why_not(tech(store_id="store_baixa"), NEED, []) is None  # no store: anyone qualified


def test_a_certificate_valid_on_the_visit_day_is_enough() -> None:
    last_day = [{"name": "gel", "issuer": "A", "expires_on": "2030-05-01"}]
    assert why_not(tech(certificates=last_day), NEED, []) is None


def test_an_extra_shift_covers_a_day_without_a_weekly_shift() -> None:
    extra = [{"on": "2030-05-01", "kind": "extra", "start": "09:00", "end": "13:00"}]
    assert why_not(tech(shifts=[], exceptions=extra), NEED, []) is None


def test_a_night_shift_runs_past_midnight() -> None:
    night = tech(shifts=[{"weekday": 2, "start": "22:00", "end": "06:00"}])
    late = datetime(2030, 5, 1, 23, 30, tzinfo=UTC)  # 00:30 Thursday in Lisbon
    assert night.on_shift(late, late + timedelta(hours=2))
    assert not night.on_shift(late, late + timedelta(hours=6))


def test_a_round_the_clock_shift_is_start_equals_end() -> None:
    always = tech(shifts=[{"weekday": d, "start": "00:00", "end": "00:00"} for d in range(7)])
    assert always.on_shift(START, END)


def test_a_visit_runs_across_midnight_when_the_shifts_meet_there() -> None:
    # 23:00 Wednesday to 01:00 Thursday in Lisbon (UTC+1 in May).
    late = datetime(2030, 5, 1, 22, 0, tzinfo=UTC)
    always = tech(shifts=[{"weekday": d, "start": "00:00", "end": "00:00"} for d in range(7)])
    assert always.on_shift(late, late + timedelta(hours=2))
    back_to_back = [
        {"weekday": 2, "start": "18:00", "end": "00:00"},
        {"weekday": 3, "start": "00:00", "end": "04:00"},
    ]
    assert tech(shifts=back_to_back).on_shift(late, late + timedelta(hours=2))
    with_a_break = [back_to_back[0], {"weekday": 3, "start": "00:30", "end": "04:00"}]
    assert not tech(shifts=with_a_break).on_shift(late, late + timedelta(hours=2))


# -------------------------------------------------------------------- calendar --
def test_travel_time_is_road_distance_at_city_speed() -> None:
    far = GeoPoint(lat=38.8300, lon=-9.0200)
    minutes = travel_time(HOME, far).total_seconds() / 60
    assert 40 < minutes < 50  # ~16 km * 1.3 at 25 km/h


def test_an_overlapping_visit_makes_the_technician_busy() -> None:
    overlapping = Commitment(START + timedelta(hours=1), END + timedelta(hours=1), HOME)
    assert not fits_calendar(NEED, [overlapping])


def test_back_to_back_at_the_same_address_fits_but_not_across_town() -> None:
    before_here = Commitment(START - timedelta(hours=1), START, HOME)
    assert fits_calendar(NEED, [before_here])
    across = GeoPoint(lat=38.6200, lon=-9.3000)
    before_there = Commitment(START - timedelta(hours=1), START - timedelta(minutes=15), across)
    assert not fits_calendar(NEED, [before_there])
    hours_before = Commitment(START - timedelta(hours=4), START - timedelta(hours=3), across)
    assert fits_calendar(NEED, [hours_before])


def test_point_in_polygon_respects_holes() -> None:
    hole = [(-9.15, 38.71), (-9.13, 38.71), (-9.13, 38.73), (-9.15, 38.73), (-9.15, 38.71)]
    donut = GeoPolygon(type="Polygon", coordinates=[LISBON_BOX.coordinates[0], hole])
    assert point_in_polygon(GeoPoint(lat=38.65, lon=-9.2), donut)
    assert not point_in_polygon(HOME, donut)
    assert not point_in_polygon(GeoPoint(lat=41.15, lon=-8.62), LISBON_BOX)


# ------------------------------------------------------------------- ranking --
def test_cost_prefers_near_then_well_rated_then_less_loaded_and_the_favourite_always() -> None:
    assert cost_km(1000, 4.5, 0, False) < cost_km(3000, 4.5, 0, False)
    assert cost_km(3000, 5.0, 0, False) < cost_km(2000, 4.0, 0, False)
    assert cost_km(1000, 4.5, 0, False) < cost_km(1000, 4.5, 2, False)
    assert cost_km(30_000, 3.0, 5, True) < cost_km(100, 5.0, 0, False)
    assert cost_km(1000, None, 0, False) == cost_km(1000, 4.5, 0, False)


def test_optimal_matching_beats_greedy_when_the_first_takes_the_shared_favourite() -> None:
    # Greedy gives A its nearest (x), leaving B a long drive to y; optimal swaps.
    costs = [{"x": 1.0, "y": 2.0}, {"x": 1.5, "y": 20.0}]
    assert match_greedy(costs) == ["x", "y"]
    assert match_optimal(costs) == ["y", "x"]


def test_matching_leaves_unmatched_visits_empty_and_never_uses_a_technician_twice() -> None:
    costs: list[dict[str, float]] = [{"x": 1.0}, {"x": 2.0}, {}]
    for chosen in (match_optimal(costs), match_greedy(costs)):
        assert chosen.count("x") == 1
        assert chosen[2] is None
    assert match_optimal([]) == []
    assert match_optimal([{}, {}]) == [None, None]


# --------------------------------------------------------------------- visit --
def line(code: str = "nails.manicure", qty: int = 1) -> PricedLine:
    return PricedLine(
        code=code, name="Manicure", skill="nails", quantity=qty, unit_price=2500, currency="EUR"
    )


def visit(**over: Any) -> Visit:
    data: dict[str, Any] = {
        "visit_id": "vs_1",
        "booking_id": "bk_1",
        "customer_id": "cus_1",
        "region": "lisbon",
        "location": HOME,
        "window_start": START,
        "window_end": END,
        "duration_minutes": 45,
        "lines": [line(qty=2)],
        "booked_at": START - timedelta(days=1),
        "search_deadline": START,
        **over,
    }
    return Visit.model_validate(data)


NOW = START - timedelta(hours=20)
WAIT = timedelta(seconds=60)


def assigned(tech_id: str = "t1") -> Visit:
    v = visit()
    offer = v.offer(tech_id, NOW, WAIT)
    v.accept(offer.offer_id, tech(technician_id=tech_id), NOW)
    return v


def test_busy_until_is_the_window_end_or_the_duration_if_longer() -> None:
    assert visit().busy_until == END
    assert visit(duration_minutes=180).busy_until == START + timedelta(hours=3)


def test_a_technician_is_late_once_the_latest_arrival_that_ends_within_the_window_passed() -> None:
    v = assigned()  # 10:00-12:00 Lisbon, 45 minutes of work, accepted 20 hours ahead
    grace, far = timedelta(minutes=10), timedelta(minutes=30)
    assert v.arrive_by == END - timedelta(minutes=45)
    due = v.late_check_at(grace, NOW, far)
    assert due == v.arrive_by + grace
    assert not v.late(due - timedelta(seconds=1), due)
    assert v.late(due, due)
    v.set_off("t1")
    assert v.late(due, due)  # on the way, but not there
    v.late_for = v.assignment
    assert not v.late(due + timedelta(hours=1), due)  # told once per assignment
    v.assignment += 1  # somebody else now: told again if they are late too
    assert v.late(due, due)
    v.arrive("t1", HOME, due, max_m=500)
    assert not v.late(due, due)
    # Work longer than the window: the latest arrival is its start.
    assert visit(duration_minutes=180).arrive_by == START
    # Assigned after the latest arrival (a search again late in the window): from when they
    # could be there, not at once.
    assigned_late = END - timedelta(minutes=5)
    assert v.late_check_at(grace, assigned_late, far) == assigned_late + far + grace


def test_an_offer_holds_the_technician_until_accepted() -> None:
    v = visit()
    offer = v.offer("t1", NOW, WAIT)
    assert (v.status, v.technician_id, offer.deadline) == (VisitStatus.OFFERED, "t1", NOW + WAIT)
    with pytest.raises(Conflict):
        v.offer("t2", NOW, WAIT)  # one open offer at a time
    v.accept(offer.offer_id, tech(), NOW + timedelta(seconds=10))
    assert v.status is VisitStatus.ASSIGNED
    assert v.technician is not None
    assert v.technician.badge_number == "LX-1001"
    assert v.assignment == 1


def test_an_offer_is_answered_once_by_its_technician_before_its_deadline() -> None:
    v = visit()
    offer = v.offer("t1", NOW, WAIT)
    with pytest.raises(Forbidden):
        v.accept(offer.offer_id, tech(technician_id="t2"), NOW)
    with pytest.raises(Conflict, match="expired"):
        v.accept(offer.offer_id, tech(), NOW + WAIT + timedelta(seconds=1))
    v.accept(offer.offer_id, tech(), NOW)
    with pytest.raises(Conflict, match="already accepted"):
        v.accept(offer.offer_id, tech(), NOW)
    with pytest.raises(Conflict, match="already accepted"):
        v.decline(offer.offer_id, "t1", NOW)


def test_decline_and_silence_release_the_technician_and_pass_them_over() -> None:
    v = visit()
    first = v.offer("t1", NOW, WAIT)
    v.decline(first.offer_id, "t1", NOW)
    second = v.offer("t2", NOW, WAIT)
    assert v.expire(second.offer_id, NOW) is None  # not yet due
    expired = v.expire(second.offer_id, NOW + WAIT)
    assert expired is not None
    assert [o.status for o in v.offers] == [OfferStatus.DECLINED, OfferStatus.EXPIRED]
    assert v.status is VisitStatus.SEARCHING
    assert v.technician_id is None
    assert v.passed_over == ["t1", "t2"]
    assert v.expire(second.offer_id, NOW + WAIT) is None  # fired twice: nothing more


def test_a_search_starting_again_has_its_own_search_time_never_past_the_window() -> None:
    """Booked days ahead, the first search ran out long ago: a technician dropping out the
    day before must not fail the visit without a single offer."""
    timeout = timedelta(minutes=15)
    v = visit(booked_at=NOW - timedelta(days=3), search_deadline=NOW - timedelta(days=3) + timeout)
    v.search_from(NOW, timeout)
    assert v.search_deadline == NOW + timeout
    v.search_from(NOW - timedelta(hours=1), timeout)
    assert v.search_deadline == NOW + timeout  # never shortened
    v.search_from(END - timedelta(minutes=5), timeout)
    assert v.search_deadline == END  # and never past the window


def test_replacing_remembers_the_previous_identity_and_voids_the_code() -> None:
    v = assigned()
    v.code_digest = "digest"
    leaving = v.replace("car broke down")
    assert leaving is not None
    assert leaving.technician_id == "t1"
    assert v.previous == leaving
    assert v.status is VisitStatus.SEARCHING
    assert v.passed_over == ["t1"]
    assert not v.code_digest  # void at once
    offer = v.offer("t2", NOW, WAIT)
    v.accept(offer.offer_id, tech(technician_id="t2", badge_number="LX-2002"), NOW)
    assert v.assignment == 2


def test_no_replacement_once_the_technician_is_at_the_door() -> None:
    v = assigned()
    v.arrive("t1", HOME, NOW, 300)
    with pytest.raises(Conflict):
        v.replace("too late")


def test_operations_assign_by_hand_from_failed_or_over_an_open_offer() -> None:
    v = visit()
    v.fail("nobody free")
    assert v.assign_by_hand(tech()) is None
    assert (v.status, v.failure) == (VisitStatus.ASSIGNED, None)
    w = visit()
    w.offer("t1", NOW, WAIT)
    w.assign_by_hand(tech(technician_id="t2"))
    assert w.offers[0].status is OfferStatus.WITHDRAWN
    x = assigned("t1")
    previous = x.assign_by_hand(tech(technician_id="t3"))
    assert previous is not None
    assert previous.technician_id == "t1"
    with pytest.raises(Conflict):
        x.assign_by_hand(tech(technician_id="t3"))


def test_cancel_frees_the_time_and_is_final() -> None:
    v = visit()
    v.offer("t1", NOW, WAIT)
    assert v.cancel()
    assert v.offers[0].status is OfferStatus.WITHDRAWN
    assert not v.cancel()


def test_a_cancellation_heard_after_completion_voids_the_visit_once_and_only_then() -> None:
    v = assigned()
    assert not v.void(NOW)  # not completed: a cancellation simply stops it
    v.arrive("t1", HOME, NOW, 300)
    v.confirm_in_app("cus_1", NOW)
    v.start("t1", NOW)
    v.complete("t1", [("nails.manicure", 1)], NOW)
    assert not v.cancel()  # what was done was done
    assert v.void(NOW + WAIT)
    assert (v.status, v.voided_at) == (VisitStatus.COMPLETED, NOW + WAIT)
    assert not v.void(NOW + 2 * WAIT)  # a second hearing changes nothing
    assert v.voided_at == NOW + WAIT


# --------------------------------------------------------------- at the door --
def test_the_visit_steps_belong_to_the_assigned_technician_in_order() -> None:
    v = assigned()
    with pytest.raises(Forbidden):
        v.set_off("t2")
    with pytest.raises(Conflict, match="confirmed"):
        v.start("t1", NOW)
    v.set_off("t1")
    assert not v.arrive("t1", GeoPoint(lat=38.7225, lon=-9.1395), NOW, 300)
    assert v.arrival_distance_m is not None
    assert v.arrival_distance_m < 50
    with pytest.raises(Conflict, match="confirmed"):
        v.start("t1", NOW)
    assert v.enter_code("t1", True, NOW, 3) is CodeResult.CONFIRMED
    with pytest.raises(Conflict):
        v.enter_code("t1", True, NOW, 3)  # one time only
    v.start("t1", NOW)
    done = v.complete("t1", [("nails.manicure", 1)], NOW)
    assert [(d.code, d.quantity, d.unit_price) for d in done] == [("nails.manicure", 1, 2500)]
    assert v.status is VisitStatus.COMPLETED


def test_a_far_check_in_is_flagged() -> None:
    v = assigned()
    assert v.arrive("t1", GeoPoint(lat=38.74, lon=-9.16), NOW, 300)
    assert v.alerts == [AlertKind.CHECK_IN_FAR]


def test_three_wrong_codes_lock_the_visit() -> None:
    v = assigned()
    v.arrive("t1", HOME, NOW, 300)
    assert [v.enter_code("t1", False, NOW, 3) for _ in range(3)] == [
        CodeResult.WRONG,
        CodeResult.WRONG,
        CodeResult.LOCKED,
    ]
    assert (v.status, v.alerts) == (VisitStatus.HALTED, [AlertKind.WRONG_CODE_LOCKOUT])
    with pytest.raises(Locked):
        v.enter_code("t1", True, NOW, 3)
    with pytest.raises(Locked):
        v.start("t1", NOW)


def test_not_the_person_halts_at_once_and_only_the_customer_may_say_it() -> None:
    v = assigned()
    with pytest.raises(Forbidden):
        v.not_the_person("cus_other")
    v.not_the_person("cus_1")
    assert (v.status, v.alerts) == (VisitStatus.HALTED, [AlertKind.NOT_THE_PERSON])
    with pytest.raises(Locked):
        v.not_the_person("cus_1")


def test_completion_takes_only_booked_catalogue_items_once_each() -> None:
    v = assigned()
    v.arrive("t1", HOME, NOW, 300)
    v.confirm_in_app("cus_1", NOW)
    v.start("t1", NOW)
    with pytest.raises(Unprocessable, match="not a catalogue item"):
        v.complete("t1", [("cash.tip", 1)], NOW)
    with pytest.raises(Unprocessable, match="once"):
        v.complete("t1", [("nails.manicure", 1), ("nails.manicure", 1)], NOW)
    assert v.status is VisitStatus.IN_SERVICE


# --------------------------------------------------------------------- codes --
KEY = b"k" * 32


def test_codes_are_six_digits_per_assignment_and_checked_by_digest() -> None:
    first, second = visit_code(KEY, "vs_1", 1), visit_code(KEY, "vs_1", 2)
    assert len(first) == 6
    assert first.isdigit()
    assert visit_code(KEY, "vs_1", 1) == first  # derived, so never stored
    assert {visit_code(KEY, "vs_1", n) for n in range(1, 50)} != {first}
    v = visit(assignment=1, code_digest=code_digest(KEY, "vs_1", 1, first))
    assert code_matches(KEY, v, first)
    assert not code_matches(KEY, v, second if second != first else "000000")
    assert not code_matches(b"x" * 32, v, first)  # another key, another code
    assert first not in (v.code_digest or "")


def test_a_voided_code_matches_nothing() -> None:
    v = visit(assignment=1, code_digest=None)
    assert not code_matches(KEY, v, visit_code(KEY, "vs_1", 1))


def test_dates_used_are_the_technicians_local_day() -> None:
    # 23:30 UTC on 30 April is already 1 May in Lisbon: a certificate expiring 30 April fails.
    late = datetime(2030, 4, 30, 23, 30, tzinfo=UTC)
    need = Need(HOME, late, late + timedelta(hours=1), ("nails",), ("gel",))
    expiring = [{"name": "gel", "issuer": "A", "expires_on": "2030-04-30"}]
    always = [{"weekday": d, "start": "00:00", "end": "00:00"} for d in range(7)]
    found = why_not(tech(certificates=expiring, shifts=always), need, [])
    assert found == f"no valid certificate gel on {date(2030, 5, 1)}"


def test_a_visit_names_the_last_step_it_reached_and_the_alert_that_stopped_it() -> None:
    v = assigned()
    assert (v.stage(), v.halted_by) == ("assigned", None)
    v.set_off("t1")
    v.arrive("t1", HOME, NOW, max_m=500)
    assert v.stage() == "arrived"
    for _ in range(3):
        v.enter_code("t1", False, NOW, attempts=3)
    assert v.status is VisitStatus.HALTED
    assert (v.stage(), v.halted_by) == ("arrived", AlertKind.WRONG_CODE_LOCKOUT)
    stopped_early = assigned()
    stopped_early.not_the_person("cus_1")
    assert (stopped_early.stage(), stopped_early.halted_by) == ("assigned", "not_the_person")
