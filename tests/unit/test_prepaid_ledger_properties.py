"""Property: whatever sequence of purchases, draws, refunds and expiries happens, the
prepaid ledger holds: the balance is the sum of the entries, it is never negative,
expired value is never spent, and nothing is drawn or given back twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.payments.ledger import EntryKind, Holding, Plan, PlanKind, sell
from shared.errors import Conflict

START = datetime(2030, 1, 1, tzinfo=UTC)

step = st.one_of(
    st.tuples(st.just("draw"), st.integers(1, 8), st.integers(0, 5)),
    st.tuples(st.just("refund"), st.integers(1, 8), st.integers(0, 5)),
    st.tuples(st.just("wait"), st.integers(1, 60), st.just(0)),
    st.tuples(st.just("expire"), st.just(0), st.just(0)),
)


def new_holding(kind: PlanKind, units: int, days: int) -> Holding:
    fields: dict[str, object] = {
        "plan_id": "pl",
        "store_id": "st",
        "name": "plan",
        "kind": kind,
        "price": 1000,
        "currency": "EUR",
        "validity_days": days,
    }
    fields["value" if kind is PlanKind.STORED_VALUE else "visits"] = units
    return sell(Plan.model_validate(fields), "hd", "cus", START)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(list(PlanKind)),
    units=st.integers(1, 20),
    days=st.integers(1, 120),
    steps=st.lists(step, max_size=40),
)
def test_the_ledger_never_goes_negative_spends_nothing_expired_and_nothing_twice(
    kind: PlanKind, units: int, days: int, steps: list[tuple[str, int, int]]
) -> None:
    holding = new_holding(kind, units, days)
    now = START
    drawn: dict[str, int] = {}  # receipt: net units it took (our own bookkeeping)
    for action, amount, receipt_no in steps:
        receipt = f"rc_{receipt_no}"
        before = holding.balance
        if action == "wait":
            now += timedelta(days=amount)
            continue
        if action == "expire":
            holding.expire(now)
            assert holding.balance == 0 or not holding.expired(now)
            continue
        try:
            if action == "draw":
                spendable = holding.spendable(now)
                holding.draw(amount, receipt, now)
                assert amount <= spendable, "drew more than was spendable"
                assert not holding.expired(now), "spent expired value"
                assert receipt not in drawn, "a receipt drew twice"
                drawn[receipt] = amount
            else:
                holding.refund(amount, receipt, now)
                assert amount <= drawn.get(receipt, 0), "gave back more than was drawn"
                drawn[receipt] -= amount
                assert holding.spendable(now) >= amount, "a refund must be usable"
        except Conflict:
            assert holding.balance == before, "a refused change changed the ledger"
        assert holding.balance == sum(e.units for e in holding.entries)
        assert holding.balance >= 0
    purchased = sum(e.units for e in holding.entries if e.kind is EntryKind.PURCHASE)
    drawn_total = -sum(e.units for e in holding.entries if e.kind is EntryKind.DRAW)
    refunded = sum(e.units for e in holding.entries if e.kind is EntryKind.REFUND)
    assert drawn_total - refunded <= purchased  # nothing spent that was not bought
    assert all(v >= 0 for v in drawn.values())
