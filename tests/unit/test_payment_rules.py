"""Receipt pricing, re-pricing, refunds, the prepaid ledger and late-cancellation fees, as a
specification."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from services.payments import domain
from services.payments.domain import (
    Coupon,
    Discount,
    Payment,
    Receipt,
    ReceiptStatus,
    Refund,
    Repayment,
    coupon_reference,
    spent_coupon,
)
from services.payments.fees import CancellationFee, FeeStatus, FeeStep
from services.payments.ledger import REFUND_GRACE, EntryKind, Holding, Plan, PlanKind, Unit, sell
from services.payments.provider import sign_webhook, webhook_is_authentic
from shared.errors import Conflict, NotFound, Unprocessable
from shared.events.payments import DisputeReason
from shared.events.types import PricedLine

NOW = datetime(2030, 5, 1, 8, 0, tzinfo=UTC)
STORE = "store_chiado"


def line(
    code: str, qty: int = 1, price: int = 2500, surcharge: int = 0, kind: str = "service"
) -> PricedLine:
    return PricedLine(
        code=code,
        name=code.title(),
        skill="" if kind == "product" else "nails",
        kind=kind,
        quantity=qty,
        unit_price=price,
        surcharge=surcharge,
        currency="EUR",
    )


def plan(kind: PlanKind = PlanKind.PACKAGE, **over: object) -> Plan:
    fields: dict[str, object] = {
        "plan_id": "pl_1",
        "store_id": STORE,
        "name": "Five manicures",
        "kind": kind,
        "price": 10000,
        "currency": "EUR",
        "validity_days": 180,
    }
    if kind is PlanKind.STORED_VALUE:
        fields["value"] = 5000
    else:
        fields["visits"] = 5
    fields.update(over)
    return Plan.model_validate(fields)


def holding(kind: PlanKind = PlanKind.PACKAGE, hid: str = "hd_1", **over: object) -> Holding:
    return sell(plan(kind, **over), hid, "cus_1", NOW - timedelta(days=1))


def issue(
    performed: list[PricedLine],
    holdings: list[Holding] | None = None,
    coupons: list[Coupon] | None = None,
) -> Receipt:
    return domain.issue(
        receipt_id="rc_1",
        booking_id="bk_1",
        customer_id="cus_1",
        technician_id="tech_1",
        store_id=STORE,
        performed=performed,
        holdings=holdings or [],
        coupons=coupons or [],
        at=NOW,
    )


def coupon(amount: int | None = 500, percent: int | None = None, cid: str = "cp_1") -> Coupon:
    return Coupon(
        coupon_id=cid,
        customer_id="cus_1",
        currency="EUR",
        amount=amount,
        percent=percent,
        reason="sorry for the wait",
        expires_at=NOW + timedelta(days=30),
    )


# ----------------------------------------------------------------- pricing --


def test_lines_come_from_performed_items_at_booked_prices_with_surcharges() -> None:
    receipt = issue(
        [line("nails.manicure", qty=2, surcharge=500), line("polish", 1, 900, 0, "product")]
    )
    assert [(r.code, r.quantity, r.unit_price, r.surcharge, r.amount) for r in receipt.lines] == [
        ("nails.manicure", 2, 2500, 500, 6000),
        ("polish", 1, 900, 0, 900),
    ]
    assert receipt.subtotal == receipt.amount_due == 6900
    assert receipt.prepaid == []
    assert receipt.discounts == []


def test_a_receipt_refuses_mixed_currencies_and_nothing_performed() -> None:
    gbp = line("x").model_copy(update={"currency": "GBP"})
    with pytest.raises(Unprocessable):
        issue([line("a"), gbp])
    with pytest.raises(Unprocessable):
        issue([])


def test_a_package_pays_the_base_price_of_covered_services_but_not_surcharges_or_products() -> None:
    package = holding(covers=["nails.manicure"])
    receipt = issue(
        [line("nails.manicure", qty=2, surcharge=500), line("polish", 1, 900, 0, "product")],
        [package],
    )
    assert [(d.holding_id, d.units, d.amount) for d in receipt.prepaid] == [("hd_1", 2, 5000)]
    assert receipt.amount_due == 2 * 500 + 900


def test_a_package_does_not_pay_for_services_it_does_not_cover_or_another_store() -> None:
    elsewhere = sell(plan(store_id="store_other"), "hd_2", "cus_1", NOW - timedelta(days=1))
    receipt = issue([line("hair.cut")], [holding(covers=["nails.manicure"]), elsewhere])
    assert receipt.prepaid == []
    assert receipt.amount_due == 2500


def test_what_expires_first_is_spent_first_and_expired_value_is_not_spent() -> None:
    later = holding(hid="hd_later", validity_days=300)
    sooner = holding(hid="hd_sooner", validity_days=100)
    expired = sell(plan(), "hd_old", "cus_1", NOW - timedelta(days=400))
    receipt = issue([line("nails.manicure")], [later, expired, sooner])
    assert [d.holding_id for d in receipt.prepaid] == ["hd_sooner"]


def test_stored_value_pays_what_is_left_after_visits_and_the_coupon() -> None:
    wallet = holding(PlanKind.STORED_VALUE, hid="hd_sv")  # 5000 of value
    receipt = issue([line("nails.manicure", qty=3, price=2500)], [wallet], [coupon(500)])
    assert receipt.subtotal == 7500
    assert [d.amount for d in receipt.discounts] == [500]
    assert [(d.holding_id, d.unit, d.amount) for d in receipt.prepaid] == [
        ("hd_sv", Unit.MONEY, 5000)
    ]
    assert receipt.amount_due == 7500 - 500 - 5000


def test_the_best_coupon_applies_once_and_never_below_zero() -> None:
    receipt = issue(
        [line("a", price=1000)], [], [coupon(300, cid="cp_a"), coupon(None, 50, "cp_b")]
    )
    assert [(d.coupon_id, d.amount) for d in receipt.discounts] == [(coupon_reference("cp_b"), 500)]
    big = issue([line("a", price=1000)], [], [coupon(5000)])
    assert big.discounts[0].amount == 1000
    assert big.amount_due == 0


def test_a_receipt_names_a_remedy_coupon_without_naming_its_complaint() -> None:
    # A safety complaint's coupon: its id names the complaint, and the complaint's kind.
    remedy = coupon(500, cid="cp_cmp_sa_0123456789abcdef:rm_2")
    receipt = issue([line("a", price=1000)], [], [remedy, coupon(100, cid="cp_other")])
    (discount,) = receipt.discounts
    assert discount.coupon_id == coupon_reference(remedy.coupon_id)
    assert "0123456789abcdef" not in json.dumps(receipt.content())  # nothing sealed names it
    assert "cmp" not in json.dumps(receipt.content())
    # Signing finds the coupon to spend from the customer's own.
    assert spent_coupon(discount, [coupon(100, cid="cp_other"), remedy]) == remedy.coupon_id
    assert spent_coupon(discount, [coupon(100, cid="cp_other")]) is None
    # A receipt issued before references named the coupon itself.
    before = Discount(coupon_id="cp_cmp_1:rm_1", description="coupon", amount=500)
    assert spent_coupon(before, [coupon(500, cid="cp_cmp_1:rm_1")]) == "cp_cmp_1:rm_1"
    assert spent_coupon(before, [coupon(100, cid="cp_other")]) is None  # not the customer's


def test_the_content_hash_names_exactly_what_the_customer_sees() -> None:
    a = issue([line("a"), line("b")])
    assert a.digest == issue([line("a"), line("b")]).digest
    assert a.digest != issue([line("b"), line("a")]).digest  # re-ordered lines
    assert a.digest != issue([line("a", price=2499), line("b")]).digest
    # Payment progress is not part of what was signed.
    paid = a.model_copy(
        update={"payments": [Payment(method="cash", amount=1, reference="x", at=NOW)]}
    )
    assert paid.digest == a.digest


def test_repricing_changes_the_receipt_only_when_what_it_depends_on_changed() -> None:
    package = holding()
    receipt = issue([line("nails.manicure")], [package])
    assert domain.reprice(receipt, [package], [], NOW) is None
    package.draw(5, "rc_other", NOW)  # spent meanwhile on another visit
    fresh = domain.reprice(receipt, [package], [], NOW)
    assert fresh is not None
    assert fresh.revision == 2
    assert fresh.prepaid == []
    assert fresh.amount_due == 2500
    assert fresh.digest != receipt.digest


# ---------------------------------------------------------------- disputes --

NOT_DONE, NOT_USED, FEWER = DisputeReason.NOT_DONE, DisputeReason.NOT_USED, DisputeReason.FEWER


def dispute(
    receipt: Receipt,
    *asked: tuple[str, int, DisputeReason],
    holdings: list[Holding] | None = None,
    coupons: list[Coupon] | None = None,
    shown: str | None = None,
) -> tuple[Receipt, domain.Dispute] | None:
    return domain.disputed(
        receipt,
        shown_hash=shown or receipt.digest,
        asked=list(asked),
        holdings=holdings or [],
        coupons=coupons or [],
        at=NOW,
    )


def test_a_disputed_item_comes_off_the_receipt_and_the_rest_is_priced_again() -> None:
    package = holding(covers=["nails.manicure"])
    receipt = issue(
        [
            line("nails.manicure", qty=3, surcharge=500),
            line("nails.art"),
            line("polish", 2, 900, 0, "product"),
        ],
        [package],
        [coupon(500)],
    )
    made = dispute(
        receipt,
        ("nails.manicure", 1, FEWER),
        ("polish", 2, NOT_USED),
        holdings=[package],
        coupons=[coupon(500)],
    )
    assert made is not None
    fresh, taken = made
    assert [(r.code, r.quantity, r.amount) for r in fresh.lines] == [
        ("nails.manicure", 2, 6000),
        ("nails.art", 1, 2500),
    ]
    assert [(i.code, i.quantity, i.amount, i.reason) for i in taken.items] == [
        ("nails.manicure", 1, 3000, FEWER),
        ("polish", 2, 1800, NOT_USED),
    ]
    assert fresh.subtotal == 8500
    # The package still pays for the manicures left (at base price), the coupon the rest.
    assert [(d.holding_id, d.units) for d in fresh.prepaid] == [("hd_1", 2)]
    assert fresh.amount_due == 8500 - 5000 - 500
    assert fresh.revision == receipt.revision + 1
    assert fresh.disputed_at == NOW
    # The customer signs the next revision: what was taken off is part of it, sealed.
    assert fresh.digest != receipt.digest
    assert fresh.content()["disputed"] == [
        {
            "code": "nails.manicure",
            "name": "Nails.Manicure",
            "kind": "service",
            "quantity": 1,
            "amount": 3000,
            "reason": "fewer",
        },
        {
            "code": "polish",
            "name": "Polish",
            "kind": "product",
            "quantity": 2,
            "amount": 1800,
            "reason": "not_used",
        },
    ]
    assert receipt.lines[0].quantity == 3  # the receipt read is not changed in place


def test_a_receipt_nobody_disputed_reads_and_hashes_as_before() -> None:
    receipt = issue([line("a"), line("b")])
    assert "disputed" not in receipt.content()
    assert set(receipt.content()) == domain.CONTENT_FIELDS
    # Its hash as the code before disputes computed it (a customer looking at a receipt
    # across the upgrade signs what they saw).
    assert receipt.digest == "b508f68754dc9dde1b01dd6c0a8e921291eb7ef330b2cd2b2ca88506b62d89a1"


def test_a_dispute_takes_the_dearest_units_of_an_item_off_first() -> None:
    # Nobody can tell which unit was not delivered: the customer is given the benefit.
    receipt = issue([line("a", qty=1, surcharge=1000), line("b"), line("a", qty=2)])
    made = dispute(receipt, ("a", 1, NOT_DONE))
    assert made is not None
    fresh, taken = made
    assert [(r.code, r.quantity, r.amount) for r in fresh.lines] == [("b", 1, 2500), ("a", 2, 5000)]
    assert taken.items[0].amount == 3500
    both = dispute(receipt, ("a", 2, FEWER))
    assert both is not None
    assert [(r.code, r.quantity) for r in both[0].lines] == [("b", 1), ("a", 1)]
    assert both[1].items[0].amount == 3500 + 2500


def test_a_dispute_the_receipt_cannot_bear_is_refused_and_changes_nothing() -> None:
    receipt = issue([line("a", qty=2), line("polish", 1, 900, 0, "product")])
    before = receipt.model_copy(deep=True)
    for asked, match in [
        (("zz", 1, NOT_DONE), "zz is not on the receipt"),
        (("a", 3, FEWER), "has 2 of a, not 3"),
        (("a", 1, NOT_USED), "a is a service"),
        (("polish", 1, NOT_DONE), "polish is a product"),
    ]:
        with pytest.raises(Unprocessable, match=match):
            dispute(receipt, asked)
    with pytest.raises(Unprocessable, match="nothing would be left to sign"):
        dispute(receipt, ("a", 2, NOT_DONE), ("polish", 1, NOT_USED))
    # Nor is everything but a free sample: that is no visit either.
    with_sample = issue([line("a"), line("sample", 1, 0, 0, "product")])
    with pytest.raises(Unprocessable, match="nothing would be left to sign"):
        dispute(with_sample, ("a", 1, NOT_DONE))
    assert receipt == before


def test_a_dispute_names_the_receipt_shown_and_asked_again_changes_nothing() -> None:
    receipt = issue([line("a", qty=2), line("b")])
    with pytest.raises(Conflict, match="current revision 1"):
        dispute(receipt, ("a", 1, FEWER), shown="0" * 64)
    made = dispute(receipt, ("a", 1, FEWER))
    assert made is not None
    fresh, _ = made
    # The same call again (a lost answer, retried) is the dispute made, not a second.
    assert dispute(fresh, ("a", 1, FEWER), shown=receipt.digest) is None
    two = issue([line("a", qty=2), line("b", qty=2)])
    made_two = dispute(two, ("a", 1, FEWER), ("b", 1, FEWER))
    assert made_two is not None  # retried with its items in another order: the same
    assert dispute(made_two[0], ("b", 1, FEWER), ("a", 1, FEWER), shown=two.digest) is None
    # Another dispute of the revision shown first is stale.
    with pytest.raises(Conflict, match="current revision 2"):
        dispute(fresh, ("b", 1, NOT_DONE), shown=receipt.digest)
    again = dispute(fresh, ("b", 1, NOT_DONE))
    assert again is not None
    assert [(r.code, r.quantity) for r in again[0].lines] == [("a", 1)]
    assert [d.revision for d in again[0].disputes] == [2, 3]


def test_a_signed_or_withdrawn_receipt_is_not_disputed() -> None:
    signed = issue([line("a", qty=2)]).model_copy(update={"status": ReceiptStatus.SEALED})
    with pytest.raises(Conflict, match="a complaint about the visit"):
        dispute(signed, ("a", 1, FEWER))
    voided = issue([line("a", qty=2)])
    voided.void("booking cancelled", NOW)
    with pytest.raises(Conflict, match="withdrawn: booking cancelled"):
        dispute(voided, ("a", 1, FEWER))


# ----------------------------------------------------------------- refunds --


def paid_receipt(*payments: tuple[str, int], prepaid: list[Holding] | None = None) -> Receipt:
    receipt = issue([line("nails.manicure", qty=2, surcharge=500)], prepaid or [])
    return receipt.model_copy(
        update={"payments": [Payment(method=m, amount=a, reference=m, at=NOW) for m, a in payments]}
    )


def test_a_refund_goes_back_to_the_provider_first_and_never_beyond_what_was_paid() -> None:
    receipt = paid_receipt(("provider", 6000))
    parts = domain.allocate_refund(receipt, 2000)
    assert [(p.to, p.amount) for p in parts] == [("provider", 2000)]
    with pytest.raises(Conflict):
        domain.allocate_refund(receipt, 6001)
    with pytest.raises(Unprocessable):
        domain.allocate_refund(receipt, -5)


def refunded(receipt: Receipt, refund_id: str, amount: int) -> Refund:
    parts = domain.allocate_refund(receipt, amount)
    refund = Refund(refund_id=refund_id, amount=amount, reason="late", parts=parts, at=NOW)
    receipt.refunds.append(refund)
    return refund


BY_TRANSFER = Repayment(way="bank_transfer", reference="TR-1", by="ops_1", at=NOW)


def test_a_declined_card_refund_is_owed_until_repaid_another_way_once() -> None:
    receipt = paid_receipt(("provider", 6000))
    declined = refunded(receipt, "rf_1", 2000)
    declined.card_declined("the card's account is closed")
    # Still the customer's, and owed by that refund: no other refund may take its place.
    assert (receipt.refunded, receipt.refundable, declined.owed) == (2000, 4000, 2000)
    with pytest.raises(Conflict, match=r"the rest is owed by rf_1 .*: record it repaid"):
        domain.allocate_refund(receipt, 4001)
    with pytest.raises(NotFound):
        receipt.repay("rf_none", BY_TRANSFER)
    refund, amount = receipt.repay("rf_1", BY_TRANSFER)
    given = BY_TRANSFER.model_copy(update={"amount": 2000})  # what it gave, kept with it
    assert (amount, refund.parts[0].repaid) == (2000, given)
    assert (receipt.refunded, receipt.refundable, declined.owed) == (2000, 4000, 0)
    with pytest.raises(Conflict, match="owes nothing"):
        receipt.repay("rf_1", BY_TRANSFER)  # repaid once
    # Nobody but operations reads how, or who; the technician not the bank's words either.
    seen = refund.seen_by(insider=False, ops=False).parts[0]
    assert (seen.declined, seen.repaid) == (
        "declined",
        given.model_copy(update={"reference": None, "by": None}),
    )
    assert refund.seen_by(insider=True, ops=True) == refund


def test_a_cash_refund_is_owed_until_operations_record_it_handed_back() -> None:
    """Nothing moves cash by itself: the refund is the customer's money still until somebody
    hands it back and operations record it."""
    receipt = paid_receipt(("cash", 5000))
    refund = refunded(receipt, "rf_1", 2000)
    assert [(p.to, p.amount, p.owed) for p in refund.parts] == [("cash", 2000, True)]
    # Promised: not to be refunded again (that would pay twice), yet owed till handed back.
    assert (receipt.refunded, receipt.refundable, refund.owed) == (2000, 3000, 2000)
    again = domain.allocate_refund(receipt, receipt.refundable)
    assert [(p.to, p.amount) for p in again] == [("cash", 3000)]
    in_hand = Repayment(way="cash", reference="handed back by tech_1", by="ops_1", at=NOW)
    _, amount = receipt.repay("rf_1", in_hand)
    assert amount == 2000
    assert (receipt.refunded, receipt.refundable, refund.owed) == (2000, 3000, 0)
    with pytest.raises(Conflict, match="owes nothing"):
        receipt.repay("rf_1", in_hand)
    # Not the bank's refusal: there was none. Who recorded it is operations' alone.
    seen = refund.seen_by(insider=False, ops=False).parts[0]
    assert (seen.declined, seen.repaid) == (
        None,
        in_hand.model_copy(update={"reference": None, "by": None, "amount": 2000}),
    )


def test_a_refused_refund_and_another_each_owe_their_own_money() -> None:
    """Two refunds of one visit, the first refused by the card: the second takes none of the
    first's money, so each is settled on its own (the first by hand) and neither pays twice."""
    receipt = paid_receipt(("provider", 6000))
    refunded(receipt, "rf_1", 2000).card_declined("disputed")
    second = domain.allocate_refund(receipt, receipt.refundable)
    assert [(p.to, p.amount) for p in second] == [("provider", 4000)]
    receipt.refunds.append(
        Refund(refund_id="rf_2", amount=4000, reason="all", parts=second, at=NOW)
    )
    assert receipt.refundable == 0
    _, amount = receipt.repay("rf_1", BY_TRANSFER)
    assert (amount, receipt.refunded, receipt.refundable) == (2000, 6000, 0)


def test_a_receipt_refunded_again_before_refused_money_was_kept_is_not_repaid_twice() -> None:
    """Receipts from before the rule: refused money was refundable again, and was. Repaying
    the refused refund as well would pay twice; nothing is refundable, never less."""
    receipt = paid_receipt(("provider", 6000))
    refunded(receipt, "rf_1", 6000).card_declined("disputed")
    gone = [domain.RefundPart(to="provider", amount=6000)]  # as the old rule allocated it
    receipt.refunds.append(Refund(refund_id="rf_2", amount=6000, reason="r", parts=gone, at=NOW))
    assert receipt.refundable == 0
    with pytest.raises(Conflict, match="would pay twice"):
        receipt.repay("rf_1", BY_TRANSFER)


def test_a_refused_refund_partly_refunded_again_before_the_rule_owes_only_the_rest() -> None:
    """Paid 6000 by card; the refund of it all was refused, and operations refunded 2400 to
    the card again under the old rule. 3600 is the customer's still: repaying the refused
    refund gives that, and nothing more may be refunded."""
    receipt = paid_receipt(("provider", 6000))
    refunded(receipt, "rf_1", 6000).card_declined("disputed")
    again = [domain.RefundPart(to="provider", amount=2400)]  # as the old rule allocated it
    receipt.refunds.append(Refund(refund_id="rf_2", amount=2400, reason="r", parts=again, at=NOW))
    assert (receipt.refunded, receipt.refundable, receipt.owing) == (6000, 0, ["rf_1"])
    with pytest.raises(Conflict, match=r"nothing is left .* owed by rf_1"):
        domain.allocate_refund(receipt, 1)
    _, amount = receipt.repay("rf_1", BY_TRANSFER)
    assert (amount, receipt.owing, receipt.refundable) == (3600, [], 0)


def test_a_package_paid_receipt_refused_twice_before_the_rule_still_refunds_the_package() -> None:
    """1000 by card, 5000 from a package; two refunds of the card's 1000 were both refused
    under the old rule. One repaid gives the card's money back; the other owes nothing, and
    is not named as owing; the package's 5000 may still be refunded."""
    package = holding(covers=["nails.manicure"])
    receipt = paid_receipt(("provider", 1000), prepaid=[package])
    for refund_id in ("rf_1", "rf_2"):
        gone = [domain.RefundPart(to="provider", amount=1000, declined="closed")]
        receipt.refunds.append(
            Refund(refund_id=refund_id, amount=1000, reason="r", parts=gone, at=NOW)
        )
    assert (receipt.refundable, receipt.owing) == (5000, ["rf_1", "rf_2"])
    _, amount = receipt.repay("rf_1", BY_TRANSFER)
    assert (amount, receipt.refundable, receipt.owing) == (1000, 5000, [])
    with pytest.raises(Conflict, match="would pay twice"):
        receipt.repay("rf_2", BY_TRANSFER)
    assert [p.to for p in domain.allocate_refund(receipt, 5000)] == ["holding"]


def test_the_card_money_of_a_refused_refund_is_not_refunded_again_however_much_is_left() -> None:
    """Paid 1000 by card and the rest from a package, and the card's 1000 refused (the account
    is closed): a second refund gives back from the package, not the card's 1000 again."""
    package = holding(covers=["nails.manicure"])
    receipt = paid_receipt(("provider", 1000), prepaid=[package])
    assert receipt.refundable == 6000
    refunded(receipt, "rf_1", 1000).card_declined("account closed")
    parts = domain.allocate_refund(receipt, 1000)
    assert [p.to for p in parts] == ["holding"]
    _, amount = receipt.repay("rf_1", BY_TRANSFER)
    assert amount == 1000
    assert (receipt.refunded, receipt.refundable) == (1000, 5000)


def test_only_a_fee_whose_refund_the_card_declined_is_repaid_by_hand() -> None:
    fee = late_fee()
    with pytest.raises(Conflict, match="owed"):
        fee.repaid_by_hand(BY_TRANSFER)
    fee.charge()
    fee.paid("sbx_1", NOW)
    fee.withdraw("payments", SIGNED, NOW)
    assert fee.refund_declined("disputed")
    fee.repaid_by_hand(BY_TRANSFER)
    assert (fee.status, fee.refund_repaid) == (FeeStatus.REFUNDED, BY_TRANSFER)
    assert fee.seen_by(ops=False).refund_repaid == BY_TRANSFER.model_copy(
        update={"reference": None, "by": None}
    )
    with pytest.raises(Conflict, match="refunded"):
        fee.repaid_by_hand(BY_TRANSFER)


def test_a_refund_reaching_a_package_gives_back_whole_visits_and_nothing_twice() -> None:
    package = holding(covers=["nails.manicure"])
    receipt = paid_receipt(("cash", 1000), prepaid=[package])  # 2 visits (5000) + 1000 cash
    assert receipt.refundable == 6000
    first = domain.allocate_refund(receipt, 1500)
    assert [(p.to, p.amount, p.units) for p in first] == [
        ("cash", 1000, None),
        ("holding", 500, 1),  # half a visit's worth gives a whole visit back
    ]
    receipt.refunds.append(
        domain.Refund(refund_id="r1", amount=1500, reason="late", parts=first, at=NOW)
    )
    second = domain.allocate_refund(receipt, receipt.refundable)
    assert [(p.to, p.amount, p.units) for p in second] == [("holding", 4500, 1)]


# ------------------------------------------------------------------ ledger --


def test_a_ledger_balance_is_the_sum_of_its_entries_and_a_draw_never_overdraws() -> None:
    package = holding()
    assert package.balance == 5
    assert package.entries[0].kind is EntryKind.PURCHASE
    package.draw(3, "rc_1", NOW)
    with pytest.raises(Conflict):
        package.draw(3, "rc_2", NOW)
    with pytest.raises(Conflict):
        package.draw(1, "rc_1", NOW)  # the same receipt twice
    assert package.balance == 2 == sum(e.units for e in package.entries)


def test_expired_value_cannot_be_spent_and_is_written_off_once() -> None:
    package = holding(validity_days=10)
    after = package.expires_at + timedelta(seconds=1)
    assert package.spendable(after) == 0
    with pytest.raises(Conflict):
        package.draw(1, "rc_1", after)
    assert package.expire(after) is not None
    assert package.balance == 0
    assert package.expire(after) is None


def test_a_refund_to_an_expired_package_stays_usable_for_a_while() -> None:
    package = holding(validity_days=10)
    package.draw(2, "rc_1", NOW)
    after = package.expires_at + timedelta(days=1)
    package.expire(after)
    package.refund(1, "rc_1", after)
    assert package.spendable(after) == 1
    with pytest.raises(Conflict):
        package.refund(2, "rc_1", after)  # only one more visit was drawn by rc_1


def test_a_refund_to_a_package_about_to_expire_stays_usable_for_the_grace_too() -> None:
    package = holding(validity_days=10)
    package.draw(1, "rc_1", NOW)
    almost = package.expires_at - timedelta(days=2)
    package.refund(1, "rc_1", almost)
    assert package.expires_at == almost + REFUND_GRACE
    assert package.spendable(almost + REFUND_GRACE - timedelta(days=1)) == 5
    roomy = holding(validity_days=90)
    roomy.draw(1, "rc_2", NOW)
    until = roomy.expires_at
    roomy.refund(1, "rc_2", NOW)
    assert roomy.expires_at == until  # time enough left: nothing changes


def test_a_refund_to_a_package_not_yet_written_off_revives_only_what_it_gives_back() -> None:
    """The package expired with visits unused, and its expiry had not run yet (payments was
    down): a refund gives back its visit for a while, not the ones that expired."""
    package = holding(validity_days=10)  # 5 visits
    package.draw(2, "rc_1", NOW)
    after = package.expires_at + timedelta(days=1)
    package.refund(1, "rc_1", after)
    assert package.spendable(after) == 1
    assert package.expire(after) is None  # nothing left to write off twice


def test_an_unsigned_receipt_is_voided_once_and_a_signed_one_never() -> None:
    receipt = issue([line("nails.manicure")])
    assert not receipt.signed
    assert receipt.void("booking cancelled", NOW)
    assert (receipt.status, receipt.void_reason) == (ReceiptStatus.VOIDED, "booking cancelled")
    assert not receipt.signed
    assert not receipt.void("again", NOW)
    assert receipt.void_reason == "booking cancelled"
    signed = issue([line("nails.manicure")]).model_copy(update={"status": ReceiptStatus.SEALED})
    assert signed.signed
    with pytest.raises(Conflict, match="signed"):
        signed.void("too late", NOW)
    assert signed.status is ReceiptStatus.SEALED


def test_only_a_written_off_receipt_is_reopened_and_its_write_off_is_kept() -> None:
    receipt = issue([line("nails.manicure")]).model_copy(
        update={"status": ReceiptStatus.SEALED, "reminders_sent": 1}
    )
    with pytest.raises(Conflict, match="only a written-off receipt"):
        receipt.reopen("ops_1", "cash turned up", NOW)
    given_up = receipt.give_up("ops_1", "customer abroad", NOW)
    later = NOW + timedelta(days=2)
    reopening = receipt.reopen("ops_2", "the technician holds the cash", later)
    assert (receipt.status, receipt.write_off) == (ReceiptStatus.SEALED, None)
    assert receipt.reopened == [reopening]
    assert (reopening.write_off, reopening.by, reopening.at) == (given_up, "ops_2", later)
    # Only operations see who and why, of the write-off and of its reopening.
    seen = reopening.seen_by(ops=False)
    assert (seen.reason, seen.by, seen.write_off.reason, seen.write_off.by) == (None,) * 4
    assert seen.write_off.amount == given_up.amount
    # Due again: it can be written off again (the reminder was sent), or paid.
    assert receipt.give_up("ops_1", "still nothing", later).amount == given_up.amount
    receipt.reopen("ops_1", "again", later)
    assert len(receipt.reopened) == 2
    settled = receipt.model_copy(update={"status": ReceiptStatus.SETTLED})
    with pytest.raises(Conflict, match="settled"):
        settled.reopen("ops_1", "why", later)


# ---------------------------------------------------------- cancellation fees --


def late_fee() -> CancellationFee:
    return CancellationFee(
        fee_id="fee_bk_1",
        booking_id="bk_1",
        customer_id="cus_1",
        amount=1200,
        currency="EUR",
        reason="plans changed",
        cancelled_at=NOW,
    )


def test_a_fee_is_charged_once_and_each_attempt_is_numbered() -> None:
    fee = late_fee()
    assert fee.charge() == 1
    with pytest.raises(Conflict, match="charging"):
        fee.charge()  # one charge at a time
    assert fee.declined("card declined by the issuer", "payments", NOW) is FeeStep.OWED
    assert (fee.status, fee.failure) == (FeeStatus.OWED, "card declined by the issuer")
    assert fee.charge() == 2  # a new attempt, a new idempotency key
    assert fee.paid("sbx_1", NOW) is FeeStep.CHARGED
    assert (fee.status, fee.reference, fee.failure) == (FeeStatus.PAID, "sbx_1", "")
    with pytest.raises(Conflict, match="paid"):
        fee.charge()


def test_only_an_owed_fee_is_waived() -> None:
    charging = late_fee()
    charging.charge()
    with pytest.raises(Conflict, match="charging"):
        charging.waive("ops_1", "goodwill", NOW)  # the charge may yet succeed
    owed = late_fee()
    owed.waive("ops_1", "goodwill", NOW)
    assert (owed.status, owed.waived_by) == (FeeStatus.WAIVED, "ops_1")
    with pytest.raises(Conflict, match="waived"):
        owed.charge()
    with pytest.raises(Conflict, match="waived"):
        owed.waive("ops_1", "again", NOW)


def test_an_outcome_applies_only_to_a_charge_under_way() -> None:
    fee = late_fee()
    with pytest.raises(Conflict, match="not being charged"):
        fee.paid("sbx_1", NOW)
    with pytest.raises(Conflict, match="not being charged"):
        fee.declined("no", "payments", NOW)


SIGNED = "the visit was performed and the customer signed its receipt"


def test_a_withdrawn_fee_is_waived_if_owed_and_refunded_if_paid_once() -> None:
    owed = late_fee()
    assert owed.withdraw("payments", SIGNED, NOW) is FeeStep.WAIVED
    assert (owed.status, owed.waived_by, owed.waiver_reason) == (
        FeeStatus.WAIVED,
        "payments",
        SIGNED,
    )
    paid = late_fee()
    paid.charge()
    paid.paid("sbx_1", NOW)
    assert paid.withdraw("payments", SIGNED, NOW) is FeeStep.REFUND
    assert (paid.status, paid.reference, paid.refunded_at) == (FeeStatus.REFUNDED, "sbx_1", NOW)
    assert paid.withdraw("payments", SIGNED, NOW) is FeeStep.NONE  # refunded once
    with pytest.raises(Conflict, match="refunded"):
        paid.charge()
    assert owed.withdraw("payments", SIGNED, NOW) is FeeStep.NONE
    waived_by_ops = late_fee()
    waived_by_ops.waive("ops_1", "goodwill", NOW)
    assert waived_by_ops.withdraw("payments", SIGNED, NOW) is FeeStep.NONE
    assert waived_by_ops.waived_by == "ops_1"


def test_a_fee_withdrawn_while_charged_is_refunded_or_waived_by_the_outcome() -> None:
    succeeds, fails = late_fee(), late_fee()
    for fee in (succeeds, fails):
        fee.charge()
        assert fee.withdraw("payments", SIGNED, NOW) is FeeStep.NOTED
        assert fee.status is FeeStatus.CHARGING  # the charge may still go through
        with pytest.raises(Conflict, match="charging"):
            fee.waive("ops_1", "goodwill", NOW)
    assert succeeds.paid("sbx_1", NOW) is FeeStep.REFUND
    assert (succeeds.status, succeeds.paid_at) == (FeeStatus.REFUNDED, NOW)
    assert fails.declined("card declined by the issuer", "payments", NOW) is FeeStep.WAIVED
    assert (fails.status, fails.waived_by, fails.waiver_reason) == (
        FeeStatus.WAIVED,
        "payments",
        SIGNED,
    )
    with pytest.raises(Conflict, match="waived"):
        fails.charge()  # nothing left for the customer to pay


def test_a_provider_webhook_signature_outside_ascii_is_refused_not_a_crash() -> None:
    """The route takes calls from anywhere; comparing a str with a character outside ASCII
    raised TypeError (a 500) instead of saying the signature does not match."""
    secret, body = b"webhook-secret", b'{"reference": "ch_1"}'
    assert webhook_is_authentic(secret, body, sign_webhook(secret, body))
    assert not webhook_is_authentic(secret, body, "\xe9" + sign_webhook(secret, body)[1:])
    assert not webhook_is_authentic(secret, body, None)
