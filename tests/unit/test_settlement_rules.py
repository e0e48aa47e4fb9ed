"""Stores' weekly settlements, as a specification: which movements of money on a receipt are
entries of the store's ledger, how a week's statement adds them up, and when it closes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from services.payments import domain
from services.payments.domain import (
    CustomerSignature,
    Payment,
    Receipt,
    ReceiptStatus,
    Refund,
    RefundPart,
    Repayment,
    SignatureMethod,
)
from services.payments.ledger import Holding, Plan, PlanKind, sell
from services.payments.settlements import (
    EntryKind,
    Statement,
    Totals,
    commission_of,
    entries_of,
    entry_ids,
    week_end,
    week_of,
    week_start,
)
from shared.errors import Conflict
from shared.events.types import PricedLine

NOW = datetime(2030, 5, 1, 8, 0, tzinfo=UTC)  # a Wednesday of 2030-W18
STORE = "store_chiado"
HOUR = timedelta(hours=1)


def manicures(qty: int) -> PricedLine:
    return PricedLine(
        code="nails.manicure",
        name="Manicure",
        skill="nails",
        quantity=qty,
        unit_price=2500,
        currency="EUR",
    )


def package() -> Holding:
    plan = Plan(
        plan_id="pl_1",
        store_id=STORE,
        name="One manicure",
        kind=PlanKind.PACKAGE,
        price=2500,
        currency="EUR",
        validity_days=180,
        visits=1,
    )
    return sell(plan, "hd_1", "cus_1", NOW - timedelta(days=1))


def signed(qty: int = 2, holdings: list[Holding] | None = None, coupon: int = 0) -> Receipt:
    """A receipt of `qty` manicures at 25.00, signed, drawn from `holdings`, less a coupon
    of `coupon`."""
    coupons = []
    if coupon:
        coupons = [
            domain.Coupon(
                coupon_id="cp_1",
                customer_id="cus_1",
                currency="EUR",
                amount=coupon,
                expires_at=NOW + timedelta(days=30),
            )
        ]
    receipt = domain.issue(
        receipt_id="rc_1",
        booking_id="bk_1",
        customer_id="cus_1",
        technician_id="tech_1",
        store_id=STORE,
        performed=[manicures(qty)],
        holdings=holdings or [],
        coupons=coupons,
        at=NOW,
    )
    receipt.signature = CustomerSignature(
        method=SignatureMethod.DRAWN, artefact="ab" * 32, signed_at=NOW
    )
    receipt.status = ReceiptStatus.SEALED
    return receipt


def kinds(receipt: Receipt) -> list[tuple[str, EntryKind, int, int]]:
    return [
        (e.entry_id.removeprefix("rc_1:"), e.kind, e.takings, e.held) for e in entries_of(receipt)
    ]


def refunded(receipt: Receipt, refund_id: str, amount: int) -> Refund:
    """A refund of `amount` made on the receipt, the way the money came."""
    refund = Refund(
        refund_id=refund_id,
        amount=amount,
        reason="late",
        parts=domain.allocate_refund(receipt, amount),
        at=NOW + HOUR,
    )
    receipt.refunds.append(refund)
    return refund


def test_an_unsigned_receipt_has_no_entries_and_a_signed_one_one_per_movement() -> None:
    receipt = signed(qty=3, holdings=[package()], coupon=500)
    unsigned = receipt.model_copy(update={"status": ReceiptStatus.ISSUED, "signature": None})
    assert entries_of(unsigned) == []
    # One manicure from the package the store sold, 5.00 off by the platform's coupon.
    assert kinds(receipt) == [
        ("prepaid:0", EntryKind.PREPAID, 2500, 2500),
        ("coupon:0", EntryKind.COUPON, 500, 0),
    ]
    receipt.payments += [
        Payment(method="provider", amount=3000, reference="ch_1", at=NOW),
        Payment(method="cash", amount=1500, reference="cash:tech_1", at=NOW + HOUR),
    ]
    assert kinds(receipt)[2:] == [
        ("paid:0", EntryKind.CARD, 3000, 0),
        ("paid:1", EntryKind.CASH, 1500, 1500),  # in the store's technician's hand
    ]
    assert {e.store_id for e in entries_of(receipt)} == {STORE}


def test_what_was_entered_stays_as_it_was_whatever_moves_after() -> None:
    """Each save enters only what is new: the entries a receipt had stay, under the same ids
    and with the same figures, whatever moves on it afterwards."""
    receipt = signed(qty=2, holdings=[package()])
    before = entries_of(receipt)
    changes: list[Callable[[Receipt], object]] = [
        lambda r: r.payments.append(Payment(method="provider", amount=2500, reference="c", at=NOW)),
        lambda r: refunded(r, "rf_1", 3000),
        lambda r: r.refunds[0].card_declined("account closed"),
        lambda r: r.repay("rf_1", Repayment(way="bank_transfer", reference="T", by="o", at=NOW)),
    ]
    for change in changes:
        change(receipt)
        after = {e.entry_id: e for e in entries_of(receipt)}
        assert [after.get(e.entry_id) for e in before] == before
        assert entry_ids(receipt) == set(after)  # what a read notes, without the entries
        assert len(after) > len(before)
        before = list(after.values())


def repaid(receipt: Receipt) -> tuple[str, EntryKind, int, int]:
    [found] = [k for k in kinds(receipt) if k[0].endswith(":repaid")]
    return found


def test_a_repayment_takes_off_what_it_gave_not_what_the_refund_said() -> None:
    """A receipt from before refused money was kept promised may have refunded it to the card
    again: repaying the refused refund then gives back only the rest, and only that comes
    off the store's takings."""
    receipt = signed(qty=2)
    receipt.payments.append(Payment(method="provider", amount=1000, reference="c", at=NOW))
    refused = refunded(receipt, "rf_a", 1000)
    refused.card_declined("account closed")
    again = Refund(
        refund_id="rf_b",
        amount=600,
        reason="made before the rule",
        parts=[RefundPart(to="provider", amount=600)],
        at=NOW,
    )
    receipt.refunds.append(again)
    _, given = receipt.repay("rf_a", Repayment(way="cash", reference="R", by="o", at=NOW))
    assert given == 400
    assert repaid(receipt) == ("refund:rf_a:repaid", EntryKind.REFUND, -400, 0)
    # 10.00 paid, 10.00 back to the customer (6.00 to the card, 4.00 by hand): none taken.
    assert sum(e.takings for e in entries_of(receipt)) == 0
    # A repayment from before what it gave was kept: its parts' sum.
    refused.parts[0].repaid = Repayment(way="cash", reference="R", by="o", at=NOW)
    assert repaid(receipt) == ("refund:rf_a:repaid", EntryKind.REFUND, -1000, 0)


def test_a_visit_written_off_keeps_what_its_package_and_coupon_paid() -> None:
    """What the customer never paid has no entry; what the package and the platform's coupon
    paid of the visit stands."""
    receipt = signed(qty=3, holdings=[package()], coupon=500)
    receipt.reminders_sent = 1
    receipt.give_up("ops_1", "three reminders unanswered", NOW)
    assert [(k, t) for _, k, t, _ in kinds(receipt)] == [
        (EntryKind.PREPAID, 2500),
        (EntryKind.COUPON, 500),
    ]


def test_refunds_come_off_the_takings_when_the_money_goes_back() -> None:
    receipt = signed(qty=2, holdings=[package()])
    receipt.payments.append(Payment(method="provider", amount=2500, reference="ch_1", at=NOW))
    to_card = refunded(receipt, "rf_1", 1000)
    assert kinds(receipt)[-1] == ("refund:rf_1:0", EntryKind.REFUND, -1000, 0)
    # The card would not take it back: on the takings again, until operations repay it.
    to_card.card_declined("account closed")
    assert kinds(receipt)[-2:] == [
        ("refund:rf_1:0", EntryKind.REFUND, -1000, 0),
        ("refund:rf_1:0:declined", EntryKind.REFUND_DECLINED, 1000, 0),
    ]
    receipt.repay("rf_1", Repayment(way="bank_transfer", reference="TR", by="ops", at=NOW))
    assert kinds(receipt)[-1] == ("refund:rf_1:repaid", EntryKind.REFUND, -1000, 0)
    # The rest goes to the card, then the package's visit back to the customer's card.
    refunded(receipt, "rf_2", 4000)
    assert kinds(receipt)[-2:] == [
        ("refund:rf_2:0", EntryKind.REFUND, -1500, 0),
        ("refund:rf_2:1", EntryKind.REFUND_PREPAID, -2500, -2500),
    ]


def test_cash_to_hand_back_comes_off_only_once_operations_record_it_given() -> None:
    receipt = signed(qty=2)
    receipt.payments.append(Payment(method="cash", amount=5000, reference="cash", at=NOW))
    refunded(receipt, "rf_1", 2000)
    assert [k for _, k, _, _ in kinds(receipt)] == [EntryKind.CASH]
    receipt.repay("rf_1", Repayment(way="cash", reference="handed back", by="ops", at=NOW))
    assert kinds(receipt)[-1] == ("refund:rf_1:repaid", EntryKind.REFUND, -2000, 0)


def statement(by_kind: dict[EntryKind, int], held: int, rate_bps: int = 1500) -> Statement:
    return Statement.of(
        store_id=STORE,
        week=week_of(NOW),
        currency="EUR",
        totals=Totals(visits=1, by_kind=by_kind, held=held),
        rate_bps=rate_bps,
        now=NOW,
        close_after=HOUR,
    )


def test_a_statement_pays_the_store_its_takings_less_commission_and_what_it_holds() -> None:
    by_card = statement({EntryKind.CARD: 10000}, held=0)
    assert (by_card.takings, by_card.commission, by_card.payable) == (10000, 1500, 8500)
    # Cash at the door, a visit of a card the store sold: the store owes the commission.
    in_hand = statement({EntryKind.CASH: 6000, EntryKind.PREPAID: 4000}, held=10000)
    assert (in_hand.commission, in_hand.held_by_store, in_hand.payable) == (1500, 10000, -1500)
    # A coupon is the platform's: the store is paid the full price.
    coupon = statement({EntryKind.CARD: 9000, EntryKind.COUPON: 1000}, held=0)
    assert (coupon.takings, coupon.payable) == (10000, 8500)
    # A refund comes off the takings, and its commission goes back with it.
    refunded = statement({EntryKind.CARD: 10000, EntryKind.REFUND: -3000}, held=0)
    assert (refunded.takings, refunded.commission, refunded.payable) == (7000, 1050, 5950)
    # A week of refunds only: the store gives them back, less the commission on them.
    only = statement({EntryKind.REFUND: -1000}, held=0)
    assert (only.commission, only.payable) == (-150, -850)


def test_commission_is_rounded_to_the_nearest_unit_halves_away_from_zero() -> None:
    assert [commission_of(t, 1250) for t in (4, 3, 0, -3, -4)] == [1, 0, 0, 0, -1]
    assert commission_of(2, 2500) == 1  # a half: up
    assert commission_of(-2, 2500) == -1  # and its refund gives the same back
    assert commission_of(12345, 0) == 0


def test_weeks_run_monday_to_monday_utc_and_only_real_weeks_are_named() -> None:
    assert week_of(NOW) == "2030-W18"
    assert week_start("2030-W18") == datetime(2030, 4, 29, tzinfo=UTC)
    assert week_end("2030-W18") == datetime(2030, 5, 6, tzinfo=UTC)
    sunday_night = datetime(2030, 5, 5, 23, 59, 59, tzinfo=UTC)
    assert (week_of(sunday_night), week_of(sunday_night + timedelta(seconds=1))) == (
        "2030-W18",
        "2030-W19",
    )
    # Lisbon's Monday 00:30 in summer is Sunday 23:30 UTC: the week before.
    lisbon = datetime.fromisoformat("2030-05-06T00:30:00+01:00")
    assert week_of(lisbon) == "2030-W18"
    assert week_start("2026-W53") == datetime(2026, 12, 28, tzinfo=UTC)  # 2026 has 53
    for missing in ("2025-W53", "2030-W00", "2030-W54"):
        with pytest.raises(ValueError, match="no week"):
            week_start(missing)


def test_a_week_closes_once_over_by_one_transfer_as_operations_saw_it() -> None:
    week = statement({EntryKind.CARD: 10000}, held=0)
    assert week.status == "open"  # the week is not over: entries still come in
    with pytest.raises(Conflict, match="not over"):
        week.close("ops_1", "TR-1", 8500, NOW)
    due_at = week_end(week.week) + HOUR
    due = Statement.of(
        store_id=STORE,
        week=week.week,
        currency="EUR",
        totals=Totals(visits=1, by_kind={EntryKind.CARD: 10000}, held=0),
        rate_bps=1500,
        now=due_at,
        close_after=HOUR,
    )
    assert due.status == "due"
    with pytest.raises(Conflict, match="reads differently now: 8500 payable, not 9000"):
        due.close("ops_1", "TR-1", 9000, due_at)
    assert due.status == "due"
    assert due.close("ops_1", "TR-1", 8500, due_at) is True
    assert (due.status, due.reference, due.closed_by) == ("closed", "TR-1", "ops_1")
    assert due.close("ops_1", "TR-1", 8500, due_at) is False  # the same closing, again
    with pytest.raises(Conflict, match="closed already, settled by TR-1"):
        due.close("ops_2", "TR-2", 8500, due_at)
    assert due.seen_by(ops=False).closed_by is None
    assert due.seen_by(ops=True).closed_by == "ops_1"
