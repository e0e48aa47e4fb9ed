"""Follow-up's pure rules: what a completed visit schedules, when, and what the customer's
choices make of it when it falls due; recurring care plans and their reminders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.booking.domain import Booking, BookingStatus
from services.booking.followup import (
    CALL_ATTEMPTS,
    CallOutcome,
    CarePlanStatus,
    FollowUp,
    FollowUpChoices,
    FollowUpKind,
    FollowUpStatus,
    after_visit,
    care_after_visit,
    care_items,
    care_plan_id,
    local_morning,
    services_of,
    thank_together,
)
from services.booking.pricing import CatalogueItem, ItemKind, quote
from shared.errors import Conflict
from tests.unit.test_booking_rules import booking, terms

LISBON = "Europe/Lisbon"
# A summer evening visit in Lisbon (UTC+1): done at 19:30 local.
DONE = datetime(2030, 6, 12, 18, 30, tzinfo=UTC)
K, St = FollowUpKind, FollowUpStatus


def visit(manicures: int = 1, *, redo: bool = False) -> Booking:
    b = booking(BookingStatus.COMPLETED)
    t = terms(("nails.manicure", manicures))
    b.terms = t
    b.quote = quote(t, b.window_start, after_hours=False, urgent=False)
    if redo:
        b.redo_for_complaint = "cp_1"
    return b


def care_item(code: str = "nails.manicure", every: int | None = 90) -> CatalogueItem:
    return CatalogueItem(
        code=code,
        kind=ItemKind.SERVICE,
        name="Water filter replacement",
        category="appliance",
        duration_minutes=30,
        skill="appliance",
        care_every_days=every,
        store_id="store_frio",
    )


def test_messages_go_out_at_ten_in_the_morning_of_the_region_not_at_the_hour_of_the_visit() -> None:
    at = local_morning(DONE, 1, LISBON)
    assert at.astimezone(ZoneInfo(LISBON)).isoformat() == "2030-06-13T10:00:00+01:00"
    # An urgent visit done at 00:30 local is thanked the next morning, not at half past midnight.
    night = datetime(2030, 6, 12, 23, 30, tzinfo=UTC)  # 00:30 on the 13th in Lisbon
    assert local_morning(night, 1, LISBON).astimezone(ZoneInfo(LISBON)).day == 14
    # Winter: Lisbon is on UTC itself.
    winter = local_morning(datetime(2030, 1, 5, 15, tzinfo=UTC), 7, LISBON)
    assert winter == datetime(2030, 1, 12, 10, tzinfo=UTC)


def test_a_visit_is_thanked_the_next_day_and_checked_three_months_on() -> None:
    follow_ups = after_visit(visit(), DONE, LISBON)
    assert [
        (f.kind, f.due_at.astimezone(ZoneInfo(LISBON)).date().isoformat()) for f in follow_ups
    ] == [
        (K.THANK_YOU, "2030-06-13"),
        (K.CHECK_AFTER_THREE_MONTHS, "2030-09-11"),
    ]
    assert {f.status for f in follow_ups} == {St.SCHEDULED}
    assert follow_ups[0].services == ["Nails.Manicure"]
    # Ids from the booking and kind: a completion told twice schedules each once.
    assert [f.follow_up_id for f in after_visit(visit(), DONE, LISBON)] == [
        f.follow_up_id for f in follow_ups
    ]


def test_only_a_larger_job_gets_a_call_a_week_later() -> None:
    small = {f.kind for f in after_visit(visit(2), DONE, LISBON)}  # 90 minutes
    larger = after_visit(visit(3), DONE, LISBON)  # 135 minutes
    assert K.CALL_AFTER_WEEK not in small
    call = next(f for f in larger if f.kind is K.CALL_AFTER_WEEK)
    assert call.due_at == datetime(2030, 6, 19, 9, tzinfo=UTC)  # 10:00 in Lisbon


def test_a_redo_gets_no_follow_ups_of_its_own() -> None:
    assert after_visit(visit(3, redo=True), DONE, LISBON) == []


@pytest.mark.parametrize("kind", list(FollowUpKind))
def test_a_follow_up_the_customer_turned_off_is_skipped_when_it_falls_due(
    kind: FollowUpKind,
) -> None:
    follow_up = next(f for f in after_visit(visit(3), DONE, LISBON) if f.kind is kind)
    off = FollowUpChoices(**{kind.value: False})
    assert follow_up.fall_due(off, DONE + timedelta(days=1))
    assert follow_up.status is St.SKIPPED
    # Decided once: firing again changes nothing, even after the customer turns it back on.
    assert not follow_up.fall_due(FollowUpChoices(), DONE + timedelta(days=2))
    assert follow_up.status is St.SKIPPED


def test_a_wanted_follow_up_is_sent_or_put_on_operations_call_list() -> None:
    by_kind = {f.kind: f for f in after_visit(visit(3), DONE, LISBON)}
    for follow_up in by_kind.values():
        assert follow_up.fall_due(FollowUpChoices(), DONE + timedelta(days=1))
    assert by_kind[K.THANK_YOU].status is St.SENT
    assert by_kind[K.CHECK_AFTER_THREE_MONTHS].status is St.SENT
    assert by_kind[K.CALL_AFTER_WEEK].status is St.TO_CALL


def test_a_visit_complained_about_is_not_thanked_nor_called_but_still_checked() -> None:
    by_kind = {f.kind: f for f in after_visit(visit(3), DONE, LISBON)}
    for follow_up in by_kind.values():
        assert follow_up.fall_due(FollowUpChoices(), DONE + timedelta(days=1), complained=True)
    assert by_kind[K.THANK_YOU].status is St.SKIPPED
    assert by_kind[K.CALL_AFTER_WEEK].status is St.SKIPPED
    assert by_kind[K.CHECK_AFTER_THREE_MONTHS].status is St.SENT
    # A complaint heard while they wait: the thank-you and the call are skipped at once.
    waiting = {f.kind: f for f in after_visit(visit(3), DONE, LISBON)}
    assert [f.complained_about(DONE) for f in waiting.values()] == [True, True, False]
    assert {k: f.status for k, f in waiting.items()} == {
        K.THANK_YOU: St.SKIPPED,
        K.CALL_AFTER_WEEK: St.SKIPPED,
        K.CHECK_AFTER_THREE_MONTHS: St.SCHEDULED,
    }
    # A call listed before the complaint came is taken off the list.
    listed = next(f for f in after_visit(visit(3), DONE, LISBON) if f.kind is K.CALL_AFTER_WEEK)
    listed.fall_due(FollowUpChoices(), listed.due_at)
    assert listed.status is St.TO_CALL
    assert listed.not_wanted(listed.due_at)
    assert listed.status.value == "skipped"  # by value: mypy keeps TO_CALL across the call


def test_several_visits_on_one_day_are_thanked_in_one_message_the_next_morning() -> None:
    """Three visits one day and one the next: one thank-you the next morning names the
    services of the first day's (each once), except one complained about (skipped); the
    next day's visit is thanked on its own morning. The one sent with another says which."""

    def thank_you(booking_id: str, done: datetime, *codes: str) -> FollowUp:
        b = visit()
        b.booking_id, b.terms = booking_id, terms(*((c, 1) for c in codes))
        return next(f for f in after_visit(b, done, LISBON) if f.kind is K.THANK_YOU)

    first = thank_you("bk_1", DONE, "nails.manicure")
    second = thank_you("bk_2", DONE + timedelta(hours=2), "nails.pedicure", "nails.manicure")
    third = thank_you("bk_3", DONE - timedelta(hours=5), "nails.gel")
    next_day = thank_you("bk_4", DONE + timedelta(days=1), "nails.gel")
    morning = first.due_at
    assert first.fall_due(FollowUpChoices(), morning)
    others = [second, third, next_day]
    together = thank_together(first, others, FollowUpChoices(), morning, complained={"bk_3"})
    assert [(f.booking_id, f.status, f.sent_with) for f in together] == [
        ("bk_2", St.SENT, first.follow_up_id),
        ("bk_3", St.SKIPPED, None),
    ]
    assert next_day.status is St.SCHEDULED
    sent = [first, *(f for f in together if f.sent_with)]
    assert services_of(sent) == ["Nails.Manicure", "Nails.Pedicure"]
    # In the order the visits came, whichever visit's timer sent the message.
    assert services_of([third, second, first]) == [
        "Nails.Gel",
        "Nails.Manicure",
        "Nails.Pedicure",
    ]
    # Another kind sent that morning, or a thank-you skipped, thanks nobody else.
    check = after_visit(visit(), DONE, LISBON)[1]
    assert check.fall_due(FollowUpChoices(), check.due_at)
    assert thank_together(check, others, FollowUpChoices(), morning, complained=()) == []
    off = FollowUpChoices(thank_you=False)
    skipped = thank_you("bk_5", DONE, "nails.manicure")
    assert skipped.fall_due(off, morning)
    assert skipped.status is St.SKIPPED
    later = thank_you("bk_6", DONE, "nails.manicure")
    assert thank_together(skipped, [later], off, morning, complained=()) == []
    assert later.status is St.SCHEDULED


def test_a_call_unanswered_is_tried_the_next_day_until_the_last_attempt() -> None:
    call = next(f for f in after_visit(visit(3), DONE, LISBON) if f.kind is K.CALL_AFTER_WEEK)
    with pytest.raises(Conflict):  # not on the list before it is due
        call.record_call(CallOutcome.REACHED, "ops_1", "", DONE, LISBON)
    call.fall_due(FollowUpChoices(), call.due_at)
    now = call.due_at + timedelta(hours=6)  # 16:00 in Lisbon
    for attempt in range(1, CALL_ATTEMPTS):
        call.record_call(CallOutcome.NO_ANSWER, "ops_1", "voicemail", now, LISBON)
        assert call.status is St.TO_CALL
        # The next morning at ten, not 24 hours on.
        assert call.due_at == local_morning(now, 1, LISBON)
        assert len(call.calls) == attempt
        # Tried already today: a second member of staff on a stale list cannot spend the
        # next attempt now.
        with pytest.raises(Conflict, match="not due until"):
            call.record_call(CallOutcome.NO_ANSWER, "ops_2", "", now + timedelta(minutes=5), LISBON)
        assert len(call.calls) == attempt
        now = call.due_at + timedelta(hours=1)
    call.record_call(CallOutcome.NO_ANSWER, "ops_2", "", now, LISBON)
    assert call.status is St.UNREACHED
    with pytest.raises(Conflict):
        call.record_call(CallOutcome.REACHED, "ops_1", "", now + timedelta(days=2), LISBON)


def test_a_call_the_customer_no_longer_wants_leaves_the_list() -> None:
    call = next(f for f in after_visit(visit(3), DONE, LISBON) if f.kind is K.CALL_AFTER_WEEK)
    assert not call.not_wanted(DONE)  # still scheduled: decided when it falls due
    call.fall_due(FollowUpChoices(), call.due_at)
    assert call.not_wanted(call.due_at)
    assert call.status is St.SKIPPED
    with pytest.raises(Conflict):
        call.record_call(CallOutcome.REACHED, "ops_1", "", call.due_at, LISBON)


@pytest.mark.parametrize("outcome", [CallOutcome.REACHED, CallOutcome.DECLINED])
def test_a_call_reached_or_declined_is_done(outcome: CallOutcome) -> None:
    call = next(f for f in after_visit(visit(3), DONE, LISBON) if f.kind is K.CALL_AFTER_WEEK)
    call.fall_due(FollowUpChoices(), call.due_at)
    call.record_call(outcome, "ops_1", "all well", call.due_at, LISBON)
    assert call.status is St.CALLED
    assert [(c.by, c.outcome, c.note) for c in call.calls] == [("ops_1", outcome, "all well")]


# ------------------------------------------------------------ recurring care --
def test_care_starts_a_plan_due_a_whole_interval_on_with_a_reminder_a_week_before() -> None:
    b = visit()
    needing = care_items(b, {"nails.manicure": care_item()})
    [plan] = care_after_visit(b, DONE, LISBON, needing, {})
    assert plan.plan_id == care_plan_id("cus_1", "ad_home", "nails.manicure")
    assert (plan.every_days, plan.store_id, plan.status) == (
        90,
        "store_frio",
        CarePlanStatus.ACTIVE,
    )
    # Due on the 90th day after the visit's day, at ten in Lisbon; reminded a week before.
    assert plan.next_due_at == datetime(2030, 9, 10, 9, tzinfo=UTC)
    assert plan.due_on(LISBON).isoformat() == "2030-09-10"
    assert plan.remind_at == datetime(2030, 9, 3, 9, tzinfo=UTC)
    assert plan.last_booking_id == b.booking_id


def test_items_without_recurring_care_start_no_plan() -> None:
    b = visit()
    assert care_items(b, {"nails.manicure": care_item(every=None)}) == []
    assert care_items(b, {}) == []


def test_care_done_again_moves_the_plan_on_and_an_older_visit_reported_late_does_not() -> None:
    b = visit()
    needing = care_items(b, {"nails.manicure": care_item()})
    [plan] = care_after_visit(b, DONE, LISBON, needing, {})
    later = DONE + timedelta(days=80)
    b2 = b.model_copy(update={"booking_id": "bk_2"})
    [moved] = care_after_visit(b2, later, LISBON, needing, {plan.plan_id: plan})
    assert moved is plan
    assert (plan.last_booking_id, plan.due_on(LISBON).isoformat()) == ("bk_2", "2030-11-29")
    plan.done("bk_1", DONE, LISBON)
    assert plan.last_booking_id == "bk_2"


def test_a_reminder_goes_once_per_due_date_and_only_when_wanted_and_not_booked() -> None:
    b = visit()
    [plan] = care_after_visit(b, DONE, LISBON, care_items(b, {"nails.manicure": care_item()}), {})
    on, off = FollowUpChoices(), FollowUpChoices(care_reminders=False)
    assert not plan.remind(on, False, plan.remind_at - timedelta(minutes=1))  # not yet
    assert not plan.remind(off, False, plan.remind_at)
    assert not plan.remind(on, True, plan.remind_at)  # booked already
    assert plan.remind(on, False, plan.remind_at)
    assert plan.reminded_for == plan.next_due_at
    assert not plan.remind(on, False, plan.remind_at + timedelta(hours=1))  # once


def test_a_reminder_held_back_by_a_visit_booked_looks_again_each_morning_until_past_due() -> None:
    b = visit()
    [plan] = care_after_visit(b, DONE, LISBON, care_items(b, {"nails.manicure": care_item()}), {})
    now = plan.remind_at
    assert not plan.remind(FollowUpChoices(), True, now)
    # Should the visit booked be cancelled, the reminder still comes: tomorrow's look.
    assert plan.look_again_at(True, now, LISBON) == local_morning(now, 1, LISBON)
    assert plan.look_again_at(False, now, LISBON) is None  # not held back: decided already
    week_past_due = plan.next_due_at + timedelta(days=7)
    assert plan.look_again_at(True, week_past_due, LISBON) is None  # it stops some time
    assert plan.remind(FollowUpChoices(), False, now + timedelta(days=2))  # the visit cancelled
    assert plan.look_again_at(True, now + timedelta(days=3), LISBON) is None  # reminded


def test_the_customer_changes_how_often_or_stops_a_plan() -> None:
    b = visit()
    [plan] = care_after_visit(b, DONE, LISBON, care_items(b, {"nails.manicure": care_item()}), {})
    plan.change(180, None, LISBON)
    assert plan.due_on(LISBON).isoformat() == "2030-12-09"
    assert plan.remind_at == datetime(2030, 12, 2, 10, tzinfo=UTC)  # winter: 10:00 is 10:00 UTC
    plan.change(None, False, LISBON)
    assert plan.status is CarePlanStatus.STOPPED
    assert not plan.remind(FollowUpChoices(), False, plan.remind_at)
    plan.change(None, True, LISBON)
    assert plan.remind(FollowUpChoices(), False, plan.remind_at)
