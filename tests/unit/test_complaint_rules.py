"""Complaint and review rules as a specification: deadlines, tiers, resolutions, ratings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from pymongo import AsyncMongoClient

from services.reviews.api import ResolutionIn
from services.reviews.domain import (
    CARD_REFUSED,
    CASH_TO_HAND_BACK,
    QUIET_PERIOD,
    REVIEW_EDIT_WINDOW,
    TAKEN_OFF,
    Category,
    Channel,
    Complaint,
    ComplaintFigures,
    ComplaintStatus,
    Remedy,
    RemedyIn,
    RemedyKind,
    Review,
    Severity,
    Tier,
    bayesian_rating,
    kpis,
    open_complaint,
    sla,
)
from services.reviews.storage import Complaints
from shared.errors import Conflict, Forbidden, NotFound, Unprocessable
from shared.events.reviews import (
    TakenOffItem,
    TakenOffReceipt,
    redo_booking_id,
    redo_remedy_of,
)

NOW = datetime(2030, 5, 1, 8, 0, tzinfo=UTC)


def complaint(
    category: Category = Category.QUALITY, severity: Severity = Severity.MEDIUM
) -> Complaint:
    return open_complaint(
        booking_id="bk_1",
        customer_id="cus_1",
        technician_id="tech_1",
        store_id="store_1",
        category=category,
        severity=severity,
        description="the polish chipped the next day",
        channel=Channel.APP,
        by="customer:cus_1",
        at=NOW,
    )


def test_safety_is_held_to_the_tightest_deadlines() -> None:
    for severity in Severity:
        safety = sla(Category.SAFETY, severity)
        for category in Category:
            other = sla(category, severity)
            assert safety.first_response <= other.first_response
            assert safety.resolution <= other.resolution
    assert sla(Category.SAFETY, Severity.CRITICAL).first_response == timedelta(minutes=15)


def test_a_missed_first_response_escalates_through_every_tier_and_stays_owned() -> None:
    c = complaint()
    policy = sla(c.category, c.severity)
    assert c.tier is Tier.AGENT
    assert c.escalate_if_due(NOW + timedelta(hours=1), policy) is None  # not due yet
    at = c.first_response_due
    tiers = []
    for _ in range(3):
        breach = c.escalate_if_due(at, policy)
        assert breach is not None
        assert breach.deadline == "first_response"
        tiers.append(c.tier)
        assert c.next_deadline is not None  # never without a clock
        at = c.first_response_due
    assert tiers == [Tier.SUPERVISOR, Tier.MANAGER, Tier.MANAGER]
    assert [b.tier for b in c.breaches] == [Tier.AGENT, Tier.SUPERVISOR, Tier.MANAGER]


def test_a_deadline_missed_at_the_top_tier_counts_and_leaves_its_owner() -> None:
    """A manager took it on and missed the next deadline too: the breach counts, the clock
    runs on, and it stays theirs (there is no higher queue to hand it to)."""
    c = complaint()
    policy = sla(c.category, c.severity)
    for _ in range(2):
        assert c.escalate_if_due(c.first_response_due, policy) is not None
    assert c.tier is Tier.MANAGER
    c.assign("ops:mia", "ops:mia", NOW)
    missed = c.first_response_due
    assert c.escalate_if_due(missed, policy) is not None
    assert (c.tier, c.owner, len(c.breaches)) == (Tier.MANAGER, "ops:mia", 3)
    assert c.first_response_due > missed  # the clock goes on
    assert "top tier" in c.timeline[-1].what


def test_after_the_first_response_the_resolution_deadline_escalates() -> None:
    c = complaint()
    c.respond("ops:ana", "we are looking into it", NOW + timedelta(minutes=5))
    assert c.status is ComplaintStatus.IN_PROGRESS
    due = c.next_deadline
    assert due is not None
    assert due[0] == "resolution"
    breach = c.escalate_if_due(c.resolution_due, sla(c.category, c.severity))
    assert breach is not None
    assert breach.deadline == "resolution"
    assert c.tier is Tier.SUPERVISOR


def test_a_resolution_needs_a_remedy_and_waits_for_the_customer_without_a_deadline() -> None:
    c = complaint()
    with pytest.raises(Unprocessable):
        c.propose("ops:ana", "sorry", [], NOW)
    decided = c.propose(
        "ops:ana",
        "we redo it and refund",
        [RemedyIn(kind=RemedyKind.REDO_VISIT), RemedyIn(kind=RemedyKind.APOLOGY)],
        NOW,
    )
    assert c.status is ComplaintStatus.RESOLUTION_PROPOSED
    assert c.first_response_at == NOW  # proposing is a response
    assert c.next_deadline is None  # the customer's turn: the quiet period runs instead
    assert [r.took_effect_at for r in decided] == [None, NOW]  # an apology is done by saying it


def test_the_customer_rejecting_moves_it_up_a_tier_and_accepting_closes_it() -> None:
    c = complaint()
    with pytest.raises(Conflict):
        c.accept("customer:cus_1", NOW)  # nothing proposed: cannot be closed
    c.propose("ops:ana", "apology", [RemedyIn(kind=RemedyKind.APOLOGY)], NOW)
    c.reject("customer:cus_1", "not enough", NOW, sla(c.category, c.severity))
    assert c.status is ComplaintStatus.IN_PROGRESS
    assert c.tier is Tier.SUPERVISOR
    c.propose("ops:bo", "refund", [RemedyIn(kind=RemedyKind.REFUND)], NOW)
    c.accept("customer:cus_1", NOW)
    assert c.status.value == "closed"
    assert c.closed_by == "customer:cus_1"
    with pytest.raises(Conflict):
        c.respond("ops:ana", "more", NOW)


def test_an_unanswered_resolution_closes_after_the_quiet_period_only() -> None:
    c = complaint()
    c.propose("ops:ana", "apology", [RemedyIn(kind=RemedyKind.APOLOGY)], NOW)
    assert c.quiet_until is not None
    assert not c.close_quietly(c.quiet_until - timedelta(seconds=1))
    assert c.close_quietly(c.quiet_until)
    assert c.closed_by == "platform"
    assert [s.what for s in c.timeline] == [
        "opened",
        "responded",
        "resolution proposed",
        "closed",
    ]


def test_one_early_review_does_not_decide_a_technicians_rating() -> None:
    assert bayesian_rating([]) == 4.0
    assert 3.4 < bayesian_rating([1]) < 3.6  # not 1.0
    assert bayesian_rating([5] * 50) > 4.9


def test_a_review_is_changed_only_by_its_customer_within_the_window() -> None:
    review = Review(
        booking_id="bk_1",
        customer_id="cus_1",
        technician_id="tech_1",
        rating=3,
        created_at=NOW,
        updated_at=NOW,
    )
    review.edit("cus_1", NOW + timedelta(hours=1), rating=4)
    assert review.rating == 4
    with pytest.raises(Forbidden):
        review.edit("cus_2", NOW, rating=1)
    with pytest.raises(Conflict):
        review.edit("cus_1", NOW + REVIEW_EDIT_WINDOW + timedelta(seconds=1), rating=5)


def test_kpis_rate_breaches_and_ratings_and_name_the_unknown_technician_or_store() -> None:
    figures = ComplaintFigures(
        complaints=4,
        breached=1,
        by_category={"quality": 3, "safety": 1},
        per_technician={"tech_1": 3, None: 1},
        per_store={"store_1": 4},
        first_response_minutes_median=30,
    )
    k = kpis(figures, {5: 1, 4: 2, 1: 1}, NOW, NOW + timedelta(days=1))
    assert k.complaints == 4
    assert k.breach_rate == 0.25
    assert k.first_response_minutes_median == 30
    assert k.resolution_hours_median is None
    assert k.per_technician == {"tech_1": 3, "unknown": 1}
    assert k.rating_distribution == {"1": 1, "2": 0, "3": 0, "4": 2, "5": 1}
    assert k.reviews == 4
    assert k.average_rating == 3.5
    nothing = kpis(ComplaintFigures(), {}, NOW, NOW + timedelta(days=1))
    assert (nothing.breach_rate, nothing.average_rating, nothing.reviews) == (None, None, 0)


def test_each_redo_booking_marks_the_redo_it_was_made_for_whichever_comes_first() -> None:
    """Redo bookings reach reviews in any order (each is keyed by its own id): each marks its
    own remedy; a version 1 redo (one per complaint, no remedy in its id) marks the first
    still pending."""
    c = complaint()
    (first,) = c.propose("ops:ana", "redo", [RemedyIn(kind=RemedyKind.REDO_VISIT)], NOW)
    c.reject("customer:cus_1", "still chipped", NOW, sla(c.category, c.severity))
    (second,) = c.propose("ops:bo", "redo", [RemedyIn(kind=RemedyKind.REDO_VISIT)], NOW)
    later = NOW + timedelta(minutes=5)
    second_booking = redo_booking_id(c.complaint_id, second.remedy_id)
    assert redo_remedy_of(second_booking, c.complaint_id) == second.remedy_id
    assert c.took_effect(
        RemedyKind.REDO_VISIT, later, redo_remedy_of(second_booking, c.complaint_id)
    )
    took = {r.remedy_id: r.took_effect_at for r in c.remedies}
    assert took == {first.remedy_id: None, second.remedy_id: later}
    # Version 1: the complaint's one redo booking names no remedy.
    v1_booking = redo_booking_id(c.complaint_id, None)
    assert redo_remedy_of(v1_booking, c.complaint_id) is None
    assert redo_remedy_of("bk_0123", c.complaint_id) is None
    assert c.took_effect(RemedyKind.REDO_VISIT, NOW, redo_remedy_of(v1_booking, c.complaint_id))
    assert {r.remedy_id: r.took_effect_at for r in c.remedies}[first.remedy_id] == NOW
    assert not c.took_effect(RemedyKind.REDO_VISIT, NOW, None)  # none left pending


def test_a_resolution_whose_remedy_was_not_made_goes_back_to_operations_not_closed() -> None:
    """Nobody answered within the quiet week, but its refund never happened: closing would
    bury it. It goes back to operations, its resolution due now (so it escalates)."""
    c = complaint()
    (refund,) = c.propose("ops:ana", "back", [RemedyIn(kind=RemedyKind.REFUND)], NOW)
    assert c.not_carried_out(RemedyKind.REFUND, NOW, refund.remedy_id, "cash to hand back")
    assert c.quiet_until is not None
    quiet = c.quiet_until
    assert c.close_quietly(quiet)
    assert (c.status, c.closed_at, c.resolution_due) == (ComplaintStatus.IN_PROGRESS, None, quiet)
    assert c.next_deadline == ("resolution", quiet)
    assert (c.timeline[-1].what, c.timeline[-1].detail) == ("reopened", "not made: refund")
    assert not c.close_quietly(quiet)  # not waiting for the customer any more


def test_operations_propose_anew_at_once_when_a_remedy_of_the_waiting_one_was_not_made() -> None:
    """The refund had nothing to give back: waiting the quiet week for the complaint to come
    back left the customer promised nothing. Operations may propose another at once, which
    the customer answers instead; a resolution whose remedies are under way still waits."""
    c = complaint()
    (refund,) = c.propose("ops:ana", "back", [RemedyIn(kind=RemedyKind.REFUND)], NOW)
    coupon = RemedyIn(kind=RemedyKind.COUPON, amount=500, currency="EUR")
    with pytest.raises(Conflict):
        c.propose("ops:ana", "and a coupon", [coupon], NOW)  # the refund is under way
    assert c.not_carried_out(RemedyKind.REFUND, NOW, refund.remedy_id, "nothing was paid")
    assert [r.remedy_id for r in c.unmade] == [refund.remedy_id]
    later = NOW + timedelta(hours=1)
    with pytest.raises(Unprocessable, match="Idempotency-Key"):  # a retry would replace it
        c.propose("ops:ana", "5.00 off instead", [coupon], later)
    (instead,) = c.propose("ops:ana", "5.00 off instead", [coupon], later, key="k2")
    assert c.propose("ops:ana", "5.00 off instead", [coupon], later, key="k2") == []  # retried
    assert c.status is ComplaintStatus.RESOLUTION_PROPOSED
    assert (c.resolution, c.quiet_until) == ("5.00 off instead", later + QUIET_PERIOD)
    assert c.unmade == []
    assert [c.current(r) for r in c.remedies] == [False, True]
    assert c.withdrawn_by_last == [refund]  # payments drops it: never made after all
    assert refund.withdrawn_at == later
    assert c.timeline[-1].what == "resolution proposed in place of the last (a remedy not made)"
    with pytest.raises(Conflict):  # its coupon is under way: this one waits for the answer
        c.propose("ops:ana", "yet another", [RemedyIn(kind=RemedyKind.APOLOGY)], later)
    c.accept("customer:cus_1", later, c.resolution_id)
    assert (c.status, c.remedies[-1].remedy_id) == (ComplaintStatus.CLOSED, instead.remedy_id)


def test_a_refund_owed_is_not_replaced_by_another_remedy_but_given_back() -> None:
    """Cash to hand back, or a refund the card refused, is money owed: operations give it
    back and record it. Another remedy does not take its place while the customer has the
    resolution, and one proposed after the quiet week withdraws nothing owed."""
    for owed in ("cash", "declined"):
        c = complaint()
        (refund,) = c.propose("ops:ana", "back", [RemedyIn(kind=RemedyKind.REFUND)], NOW)
        if owed == "cash":
            assert c.not_carried_out(RemedyKind.REFUND, NOW, refund.remedy_id, "cash", owed=True)
        else:
            assert c.took_effect(RemedyKind.REFUND, NOW, refund.remedy_id)
            assert c.not_carried_out(
                RemedyKind.REFUND, NOW, refund.remedy_id, "card closed", undone=True
            )
        assert refund.owed
        assert not refund.replaceable
        apology = [RemedyIn(kind=RemedyKind.APOLOGY)]
        with pytest.raises(Conflict, match="record it repaid"):
            c.propose("ops:ana", "sorry instead", apology, NOW)
        assert c.quiet_until is not None
        assert c.close_quietly(c.quiet_until)  # reopened: the money is still owed
        c.propose("ops:ana", "sorry, too", apology, c.resolution_due)
        assert (refund.withdrawn_at, c.withdrawn_by_last) == (None, [])
        assert c.took_effect(RemedyKind.REFUND, NOW, refund.remedy_id)  # repaid
        assert not refund.owed


def test_a_refund_written_off_then_paid_in_cash_after_all_is_owed_and_not_replaced() -> None:
    """Told not made (the visit written off), then the write-off taken back and the visit
    paid in cash: the refund is cash to hand back now, money owed, not a remedy another
    may take the place of (the customer would have both)."""
    c = complaint()
    (refund,) = c.propose("ops:ana", "back", [RemedyIn(kind=RemedyKind.REFUND)], NOW)
    assert c.not_carried_out(RemedyKind.REFUND, NOW, refund.remedy_id, "written off")
    assert refund.replaceable
    assert not c.not_carried_out(RemedyKind.REFUND, NOW, refund.remedy_id, "written off")
    cash = f"15.00 EUR {CASH_TO_HAND_BACK}: operations record it when given"
    assert c.not_carried_out(RemedyKind.REFUND, NOW, refund.remedy_id, cash, owed=True)
    assert (refund.not_made, refund.owed, refund.replaceable) == (cash, True, False)
    with pytest.raises(Conflict, match="record it repaid"):
        c.propose("ops:ana", "a coupon", [RemedyIn(kind=RemedyKind.APOLOGY)], NOW, key="k")


def test_a_refund_made_after_another_resolution_answered_it_says_so() -> None:
    """Payments made the refund (the visit paid after all) before the withdrawal reached
    it: the customer has both, and the complaint says so for operations to see."""
    c = complaint()
    (refund,) = c.propose("ops:ana", "back", [RemedyIn(kind=RemedyKind.REFUND)], NOW)
    assert c.not_carried_out(RemedyKind.REFUND, NOW, refund.remedy_id, "nothing was paid")
    c.propose("ops:ana", "sorry", [RemedyIn(kind=RemedyKind.APOLOGY)], NOW, key="k")
    assert not refund.made_after_withdrawn
    assert c.took_effect(RemedyKind.REFUND, NOW, refund.remedy_id)
    assert refund.made_after_withdrawn
    assert c.timeline[-1].what == "refund took effect after another resolution answered it"


def test_operations_deal_with_a_remedy_made_twice_once_in_their_own_words() -> None:
    """The customer has both the refund and the apology in its place: operations say how
    they dealt with it (closed or not), once; the same words again are a retry, other words
    a 409, and a remedy made once has nothing to deal with. The customer and the store see
    neither the step nor the words. Stored, a remedy not dealt with has neither field, which
    a reviews replica from before would refuse during a rolling deploy."""
    c = complaint()
    (refund,) = c.propose("ops:ana", "back", [RemedyIn(kind=RemedyKind.REFUND)], NOW)
    assert c.not_carried_out(RemedyKind.REFUND, NOW, refund.remedy_id, "nothing was paid")
    (apology,) = c.propose("ops:ana", "sorry", [RemedyIn(kind=RemedyKind.APOLOGY)], NOW, key="k")
    c.accept("customer:cus_1", NOW, c.resolution_id)
    stored = Complaints(AsyncMongoClient(connect=False)["unit"]).to_doc(c)
    assert [set(r) & {"dealt_with_at", "dealt_with"} for r in stored["remedies"]] == [set(), set()]
    with pytest.raises(Conflict, match="nothing to deal with"):  # not made twice (yet)
        c.deal_with_twice("ops:ana", refund.remedy_id, "kept", NOW)
    assert c.took_effect(RemedyKind.REFUND, NOW, refund.remedy_id)
    with pytest.raises(Conflict, match="nothing to deal with"):
        c.deal_with_twice("ops:ana", apology.remedy_id, "kept", NOW)
    with pytest.raises(NotFound):
        c.deal_with_twice("ops:ana", "rm_nobody", "kept", NOW)
    later = NOW + timedelta(days=2)
    assert c.deal_with_twice("ops:ana", refund.remedy_id, "kept: goodwill", later)
    assert (refund.dealt_with_at, refund.dealt_with) == (later, "kept: goodwill")
    assert (c.timeline[-1].what, c.timeline[-1].by) == ("remedy made twice: dealt with", "ops:ana")
    assert not c.deal_with_twice("ops:bo", refund.remedy_id, "kept: goodwill", later)  # a retry
    with pytest.raises(Conflict, match="dealt with already"):
        c.deal_with_twice("ops:bo", refund.remedy_id, "asked for it back", later)
    assert c.status is ComplaintStatus.CLOSED
    for store in (False, True):
        seen = c.as_seen_by_outsider(store=store)
        assert seen.remedies[0].dealt_with is None
        assert "remedy made twice: dealt with" not in [s.what for s in seen.timeline]
    complaints = Complaints(AsyncMongoClient(connect=False)["unit"])
    stored = complaints.to_doc(c)
    assert stored["remedies"][0]["dealt_with"] == "kept: goodwill"
    assert complaints.from_doc(stored) == c


def test_remedies_stored_before_owed_was_read_it_from_payments_words() -> None:
    """A refund stored as cash to hand back or refused by the card, before `owed` was
    kept, is money owed (not replaceable); one with nothing paid is not."""
    (refund,) = complaint().propose("ops:ana", "back", [RemedyIn(kind=RemedyKind.REFUND)], NOW)
    stored = refund.model_dump(exclude={"owed"})
    for why, owed in [
        (f"15.00 EUR {CASH_TO_HAND_BACK}: operations record it when given", True),
        (f"{CARD_REFUSED} 15.00 EUR of the refund back: operations repay it", True),
        ("the booking was cancelled before its visit was done: nothing was paid", False),
    ]:
        old = Remedy.model_validate({**stored, "not_made": why})
        assert (old.owed, old.replaceable) == (owed, not owed)
    kept = Remedy.model_validate({**stored, "not_made": CARD_REFUSED, "owed": False})
    assert not kept.owed  # what is stored stands


def test_an_answer_naming_a_resolution_replaced_since_changes_nothing() -> None:
    """The customer read the first resolution; operations replaced it (its refund had
    nothing to give back) before the answer came: the answer names the one it read, and is
    refused, not taken as the answer to one never seen; so is one that names none. Naming
    the new one answers it."""

    def accept(c: Complaint, resolution_id: str | None) -> None:
        c.accept("customer:cus_1", NOW, resolution_id)

    def reject(c: Complaint, resolution_id: str | None) -> None:
        policy = sla(c.category, c.severity)
        c.reject("customer:cus_1", "no", NOW, policy, resolution_id=resolution_id)

    coupon = [RemedyIn(kind=RemedyKind.COUPON, amount=500, currency="EUR")]
    for answer, after in ((accept, ComplaintStatus.CLOSED), (reject, ComplaintStatus.IN_PROGRESS)):
        c = complaint()
        (refund,) = c.propose("ops:ana", "back", [RemedyIn(kind=RemedyKind.REFUND)], NOW)
        read = c.resolution_id
        assert c.not_carried_out(RemedyKind.REFUND, NOW, refund.remedy_id, "nothing was paid")
        c.propose("ops:ana", "a coupon", coupon, NOW, key="k2")
        assert c.resolution_id not in (None, read)
        before = c.model_copy(deep=True)
        with pytest.raises(Conflict, match="another resolution"):
            answer(c, read)
        # An older app names none: it may have read the one replaced, so it reads again.
        with pytest.raises(Conflict, match="took the place of another"):
            answer(c, None)
        assert c == before
        answer(c, c.resolution_id)
        assert c.status is after


def test_a_replacement_stored_before_answers_had_to_name_it_still_needs_its_id() -> None:
    """Complaints stored before `in_place_of_another` was kept: the last proposal's step
    says whether it took the place of another, so an answer naming none is refused there
    too; a first resolution is answered as before."""
    first = complaint()
    first.propose("ops:ana", "sorry", [RemedyIn(kind=RemedyKind.APOLOGY)], NOW)
    replaced = complaint()
    (refund,) = replaced.propose("ops:ana", "back", [RemedyIn(kind=RemedyKind.REFUND)], NOW)
    assert replaced.not_carried_out(RemedyKind.REFUND, NOW, refund.remedy_id, "nothing paid")
    coupon = [RemedyIn(kind=RemedyKind.COUPON, amount=500, currency="EUR")]
    replaced.propose("ops:ana", "a coupon", coupon, NOW, key="k2")
    stored = [c.model_dump(exclude={"in_place_of_another"}) for c in (first, replaced)]
    old_first, old_replaced = (Complaint.model_validate(d) for d in stored)
    assert (old_first.in_place_of_another, old_replaced.in_place_of_another) == (False, True)
    with pytest.raises(Conflict, match="took the place of another"):
        old_replaced.accept("customer:cus_1", NOW)
    old_first.accept("customer:cus_1", NOW)
    assert old_first.status is ComplaintStatus.CLOSED


def test_a_refund_the_card_refused_after_the_customer_accepted_shows_on_the_closed_one() -> None:
    """The customer accepted a refund; the card would not take it back. The complaint says
    so and stays closed (the customer's answer stands); the money still owed is operations'
    to give back, on their board from payments."""
    c = complaint()
    (refund,) = c.propose("ops:ana", "back", [RemedyIn(kind=RemedyKind.REFUND)], NOW)
    assert c.took_effect(RemedyKind.REFUND, NOW, refund.remedy_id)
    c.accept("customer:cus_1", NOW)
    later = NOW + timedelta(days=2)
    assert c.not_carried_out(RemedyKind.REFUND, later, refund.remedy_id, "card closed", undone=True)
    assert (c.status, c.closed_at, c.remedies[0].not_made) == (
        ComplaintStatus.CLOSED,
        NOW,
        "card closed",
    )
    assert c.next_deadline is None


def test_a_remedy_an_earlier_resolution_left_unmade_does_not_keep_the_next_open() -> None:
    """The first refund was never made; the complaint came back, and operations proposed a
    coupon instead. Quiet for the week, that resolution closes: the old refund was answered."""
    c = complaint()
    (refund,) = c.propose("ops:ana", "back", [RemedyIn(kind=RemedyKind.REFUND)], NOW)
    assert c.not_carried_out(RemedyKind.REFUND, NOW, refund.remedy_id, "nothing was paid")
    assert c.quiet_until is not None
    assert c.close_quietly(c.quiet_until)  # reopened: its refund was not made
    assert c.status is ComplaintStatus.IN_PROGRESS
    then = c.quiet_until or c.resolution_due
    coupon = RemedyIn(kind=RemedyKind.COUPON, amount=500, currency="EUR")
    (instead,) = c.propose("ops:ana", "5.00 off instead", [coupon], then)
    assert c.took_effect(RemedyKind.COUPON, then, instead.remedy_id)
    assert c.quiet_until is not None
    assert c.close_quietly(c.quiet_until)
    assert (c.status, c.closed_by) == (ComplaintStatus.CLOSED, "platform")


def test_a_resolution_names_each_kind_of_remedy_once() -> None:
    """Two refunds, or two coupons, in one resolution would each be carried out: refused."""
    for kind in RemedyKind:
        one: dict[str, object] = {"kind": kind.value}
        if kind is RemedyKind.COUPON:
            one |= {"amount": 500, "currency": "EUR"}
        elif kind is RemedyKind.REFUND:
            one |= {"amount": 500}
        ResolutionIn.model_validate({"text": "sorry", "remedies": [one]})
        with pytest.raises(ValidationError, match=f"names {kind.value} once at most"):
            ResolutionIn.model_validate({"text": "sorry", "remedies": [one, one]})


def test_a_refund_said_not_made_and_then_made_shows_made() -> None:
    """Payments told a refund not made (the booking looked cancelled unpaid), then made it
    once the visit's receipt came after all: the complaint shows it made."""
    c = complaint()
    (refund,) = c.propose("ops:ana", "back", [RemedyIn(kind=RemedyKind.REFUND)], NOW)
    assert c.not_carried_out(RemedyKind.REFUND, NOW, refund.remedy_id, "cancelled unpaid")
    assert not c.not_carried_out(RemedyKind.REFUND, NOW, refund.remedy_id, "again")  # once
    assert not c.took_effect(RemedyKind.REFUND, NOW, None)  # not pending: v1 passes it by
    later = NOW + timedelta(hours=1)
    assert c.took_effect(RemedyKind.REFUND, later, refund.remedy_id)
    assert (c.remedies[0].took_effect_at, c.remedies[0].not_made) == (later, None)


def test_a_refund_the_card_refused_after_it_was_made_shows_not_made() -> None:
    """Payments said the refund was made, then the provider declined it: the complaint shows
    it not made (with why), for operations to put it right; only a refund made is undone."""
    c = complaint()
    (refund,) = c.propose("ops:ana", "back", [RemedyIn(kind=RemedyKind.REFUND)], NOW)
    assert not c.not_carried_out(RemedyKind.REFUND, NOW, "rm_other", "declined", undone=True)
    assert c.took_effect(RemedyKind.REFUND, NOW, refund.remedy_id)
    assert not c.not_carried_out(RemedyKind.REFUND, NOW, refund.remedy_id, "declined")
    assert c.not_carried_out(RemedyKind.REFUND, NOW, refund.remedy_id, "declined", undone=True)
    assert (c.remedies[0].took_effect_at, c.remedies[0].not_made) == (None, "declined")
    # A version 1 refund (naming no remedy) is undone too.
    v1 = complaint()
    v1.propose("ops:ana", "back", [RemedyIn(kind=RemedyKind.REFUND)], NOW)
    assert v1.took_effect(RemedyKind.REFUND, NOW, None)
    assert v1.not_carried_out(RemedyKind.REFUND, NOW, None, "declined", undone=True)
    assert v1.remedies[0].not_made == "declined"
    # Undone, a version 1 refund is the one made, never another still pending.
    both = complaint()
    made, _ = both.propose(
        "ops:ana", "back", [RemedyIn(kind=RemedyKind.REFUND), RemedyIn(kind=RemedyKind.REFUND)], NOW
    )
    assert both.took_effect(RemedyKind.REFUND, NOW, made.remedy_id)
    assert both.not_carried_out(RemedyKind.REFUND, NOW, None, "declined", undone=True)
    assert [(r.took_effect_at, r.not_made) for r in both.remedies] == [
        (None, "declined"),
        (None, None),
    ]


def taken_off(
    revision: int, *items: tuple[str, int, int, str], after: timedelta = timedelta(minutes=1)
) -> TakenOffReceipt:
    """Items taken off a receipt, `after` the complaint was filed (negative: before)."""
    taken = [
        TakenOffItem(
            code=f"x.{name.lower()}",
            name=name,
            kind="product" if reason == "not_used" else "service",
            quantity=quantity,
            amount=amount,
            reason=reason,
        )
        for name, quantity, amount, reason in items
    ]
    return TakenOffReceipt(
        revision=revision,
        items=taken,
        amount=sum(i.amount for i in taken),
        currency="EUR",
        at=NOW + after,
    )


def test_what_the_customer_took_off_the_receipt_is_on_the_complaint_once_each() -> None:
    """A dispute after the complaint is a step of its timeline (operations read it before they
    refund); one from before the complaint is on it without a step, even when reviews hears
    of it late; the same one told again changes nothing; several are kept in the receipt's
    order, even after closing."""
    c = complaint()
    polish = taken_off(3, ("Polish", 1, 900, "not_used"))
    assert c.receipt_disputed(polish, "customer:cus_1")
    assert not c.receipt_disputed(polish, "customer:cus_1")
    steps = [(s.what, s.detail) for s in c.timeline if s.what == TAKEN_OFF]
    assert steps == [(TAKEN_OFF, "1 x Polish (not used): 9.00 EUR not charged")]
    earlier = taken_off(
        2, ("Manicure", 2, 5000, "fewer"), ("Cuticles", 1, 700, "not_done"), after=-timedelta(1)
    )
    assert c.receipt_disputed(earlier, "customer:cus_1")
    assert [t.revision for t in c.taken_off_receipt] == [2, 3]
    assert len([s for s in c.timeline if s.what == TAKEN_OFF]) == 1
    # The customer and the store read it too (the store reads the receipt anyway).
    assert c.as_seen_by_outsider(store=True).taken_off_receipt == c.taken_off_receipt
    c.status = ComplaintStatus.CLOSED
    assert c.receipt_disputed(taken_off(4, ("Gel", 1, 100, "not_used")), "customer:c")
    assert [t.revision for t in c.taken_off_receipt] == [2, 3, 4]


def test_a_complaint_stores_what_was_taken_off_only_once_there_is_some() -> None:
    """A reviews replica from before refuses a field it does not know, on any complaint: the
    field is written only once the customer took something off."""
    store = Complaints(AsyncMongoClient(connect=False)["unit"])
    c = complaint()
    assert "taken_off_receipt" not in store.to_doc(c)
    c.receipt_disputed(taken_off(2, ("Polish", 1, 900, "not_used")), "customer:c")
    doc = store.to_doc(c)
    assert [i["name"] for i in doc["taken_off_receipt"][0]["items"]] == ["Polish"]
