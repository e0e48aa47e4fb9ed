"""Operators' margins, the rules alone (services/payments/margins.py): what the platform makes
of each region, store or technician's week, at the rate each store's week was settled at."""

from __future__ import annotations

from services.payments.margins import (
    FeesKept,
    MarginBy,
    Margins,
    Summed,
    WrittenOff,
    commission_shares,
    margins_of,
)
from services.payments.settlements import EntryKind, commission_of

W47, W48 = "2026-W47", "2026-W48"


def summed(key: str | None, week: str, store: str = "store_a", **by_kind: int) -> Summed:
    return Summed(
        key=key,
        store_id=store,
        week=week,
        currency="EUR",
        visits=1,
        by_kind={EntryKind(kind): amount for kind, amount in by_kind.items()},
    )


def of(sums: list[Summed], **kw: object) -> Margins:
    args: dict[str, object] = {
        "by": MarginBy.REGION,
        "weeks": [W48, W47],
        "sums": sums,
        "written_off": [],
        "fees": [],
        "rate_of": {},
        "default_rate_bps": 1500,
        "order": "losing",
        "limit": 50,
    }
    args.update(kw)
    return margins_of(**args)  # type: ignore[arg-type]


def test_a_coupon_is_the_platforms_cost_and_a_refund_takes_its_commission_back() -> None:
    [row] = of(
        [summed("porto", W48, card=2000, coupon=3000, refund=-1000, refund_declined=400)]
    ).rows
    figures = row.total
    # Taken in: 20 + 30 - 10 + 4 = 44.00; 15 % of it the platform's, less the 30.00 coupon.
    assert (figures.takings, figures.refunds, figures.coupons) == (4400, 600, 3000)
    assert (figures.commission, figures.platform_net, figures.store_net) == (660, -2340, 3740)


def test_a_stores_week_is_rounded_once_and_shared_out_so_the_rows_add_up_to_it() -> None:
    # Two technicians of one store, 10.03 each: the statement's 15 % of 20.06 is 3.01, not
    # 1.50 twice.
    found = of(
        [summed("tech_a", W48, card=1003), summed("tech_b", W48, card=1003)],
        by=MarginBy.TECHNICIAN,
    )
    assert sorted(r.total.commission for r in found.rows) == [150, 151]
    assert found.platform[0].commission == commission_of(2006, 1500) == 301
    # Three of 10.10: 4.55 in all, shared 1.52, 1.52, 1.51.
    three = of([summed(f"tech_{n}", W48, card=1010) for n in range(3)], by=MarginBy.TECHNICIAN)
    assert sorted(r.total.commission for r in three.rows) == [151, 152, 152]
    # A technician whose refunds outweigh their takings gives commission back.
    mixed = of(
        [summed("tech_a", W48, card=2000), summed("tech_b", W48, refund=-1000)],
        by=MarginBy.TECHNICIAN,
    )
    assert {r.key: r.total.commission for r in mixed.rows} == {"tech_a": 300, "tech_b": -150}


def test_shares_add_up_to_the_weeks_commission_whatever_the_signs() -> None:
    for takings in [
        [1003, 1003],
        [1010, 1010, 1010],
        [-1, -1],
        [2000, -1000],
        [5001, -5000],
        [100_000, -99_999],
        [0, 0],
        [3, 3, 3],
    ]:
        shared = commission_shares(takings, 1500)
        assert sum(shared) == commission_of(sum(takings), 1500), takings
        # Each within a unit of its exact share.
        for amount, share in zip(takings, shared, strict=True):
            assert abs(share - amount * 1500 / 10_000) < 1, (takings, shared)
    # A refund-only technician gives back what a paying one brought in, not nothing.
    assert commission_shares([5001, -5000], 1500) == [750, -750]
    assert commission_shares([1010, 1010, 1010], 1500) == [152, 152, 151]


def test_each_stores_week_is_charged_at_the_rate_its_statement_was_closed_at() -> None:
    found = of(
        [
            summed("lisbon", W47, "store_a", card=10_000),
            summed("lisbon", W47, "store_b", card=10_000),
        ],
        rate_of={("store_a", W47, "EUR"): 1000},
    )
    [row] = found.rows
    assert row.total.commission == 1000 + 1500  # store_a's closed week at 10 %, the other 15 %
    assert row.total.takings == 20_000
    assert row.total.visits == 2


def test_every_week_asked_is_shown_the_latest_first_and_empty_weeks_are_zero() -> None:
    found = of([summed("lisbon", W47, cash=5000)])
    [row] = found.rows
    assert [w.week for w in row.weeks] == [W48, W47]
    assert (row.weeks[0].takings, row.weeks[0].visits) == (0, 0)
    assert row.weeks[1].takings == 5000
    assert row.total.takings == 5000


def test_losing_puts_the_platforms_worst_first_and_making_its_best() -> None:
    sums = [
        summed("lisbon", W48, card=5000),  # +750
        summed("porto", W48, card=2000, coupon=3000),  # 750 - 3000
        summed(None, W48, prepaid=1000),  # +150
    ]
    assert [r.key for r in of(sums).rows] == ["porto", None, "lisbon"]
    # Each currency apart: a pound is not a euro.
    pounds = [*sums, summed("leeds", W48, coupon=100_000).model_copy(update={"currency": "GBP"})]
    assert [(r.currency, r.key) for r in of(pounds).rows][-1] == ("GBP", "leeds")
    assert [r.key for r in of(sums, order="making").rows] == ["lisbon", None, "porto"]
    limited = of(sums, limit=2)
    assert ([r.key for r in limited.rows], limited.more) == (["porto", None], 1)
    # The platform's lines add up every row, not only those shown.
    assert limited.platform[0].commission == 750 + 750 + 150


def test_what_was_written_off_counts_where_nothing_else_moved() -> None:
    found = of(
        [summed("lisbon", W48, card=5000)],
        written_off=[WrittenOff(key="faro", week=W47, currency="EUR", amount=2500)],
    )
    faro = next(r for r in found.rows if r.key == "faro")
    assert (faro.total.written_off, faro.total.takings, faro.total.platform_net) == (2500, 0, 0)
    assert faro.weeks[1].written_off == 2500


def test_the_platforms_weeks_add_the_fees_it_kept_in_each_currency() -> None:
    found = of(
        [summed("lisbon", W48, card=5000), summed("porto", W48, coupon=2000)],
        fees=[
            FeesKept(week=W48, currency="EUR", amount=1500),
            FeesKept(week=W48, currency="EUR", amount=-500),  # one given back that week
            FeesKept(week=W47, currency="GBP", amount=900),
        ],
    )
    lines = {(p.week, p.currency): p for p in found.platform}
    assert set(lines) == {(W48, "EUR"), (W47, "EUR"), (W48, "GBP"), (W47, "GBP")}
    eur = lines[W48, "EUR"]
    assert (eur.commission, eur.coupons, eur.fees_kept) == (750 + 300, 2000, 1000)
    assert eur.net == 1050 - 2000 + 1000
    assert lines[W47, "GBP"].net == 900
    assert lines[W47, "EUR"].net == 0
