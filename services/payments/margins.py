"""Operators' margins, free of I/O: which regions, stores and technicians make the platform
money, and which lose it, week by week.

They are read from the stores' ledger (settlements.py), so they add up to what the stores
were settled: every movement of money on a signed receipt, in the week it was entered.
For each region, store or technician and week:

- `takings`: what their visits brought in, less what was given back (`refunds`);
- `commission`: the platform's share of the takings, at the rate of each store's week (the
  rate its statement was kept or closed at, else today's), rounded as the statement rounds
  it and shared out by what each took in, so the rows add up to it;
- `coupons`: what the platform's coupons paid of their visits (the store is paid in full);
- `platform_net`, the platform's margin: commission less coupons. Negative: the platform
  paid out more than it kept;
- `store_net`: what the stores keep of the takings;
- `written_off`: what their customers owed and operations gave up on (nobody was paid it),
  in the week they did, less what they took back (due again) in the week they did.

A late-cancellation fee is the platform's alone and belongs to no visit: the platform's
weekly lines count each fee paid in the week it was paid, and each given back (the visit
was performed after all) in the week it was, so a week gone by never changes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from fractions import Fraction
from typing import Literal

from pydantic import Field

from services.payments.settlements import EntryKind, commission_of
from shared.events.types import WEEK_PATTERN, Currency
from shared.schema import Forbid


class MarginBy(StrEnum):
    REGION = "region"
    STORE = "store"
    TECHNICIAN = "technician"


MarginOrder = Literal["losing", "making"]

REFUND_KINDS = {EntryKind.REFUND, EntryKind.REFUND_DECLINED, EntryKind.REFUND_PREPAID}


class Summed(Forbid):
    """The ledger's entries of one region, store or technician, of one store, in one week."""

    key: str | None = Field(description="None: a region not kept (receipts before regions)")
    store_id: str
    week: str = Field(pattern=WEEK_PATTERN)
    currency: Currency
    visits: int = Field(ge=0)
    by_kind: dict[EntryKind, int]


class WrittenOff(Forbid):
    """Written off in a week (positive), or taken back in it (negative)."""

    key: str | None
    week: str = Field(pattern=WEEK_PATTERN)
    currency: Currency
    amount: int


class FeesKept(Forbid):
    """Fees paid in a week (positive), or given back in it (negative)."""

    week: str = Field(pattern=WEEK_PATTERN)
    currency: Currency
    amount: int


class MarginFigures(Forbid):
    visits: int = Field(description="Receipts with money moving in the week (a total: summed)")
    takings: int = Field(description="What the visits brought in, less refunds")
    refunds: int = Field(description="What was given back (card, by hand, to a package)")
    coupons: int = Field(description="What the platform's coupons paid")
    commission: int
    platform_net: int = Field(description="Commission less coupons: what the platform made")
    store_net: int = Field(description="What the stores keep of the takings")
    written_off: int = Field(
        description="Owed by customers, given up on by operations (less write-offs taken "
        "back: the money was due again)"
    )

    @classmethod
    def zero(cls) -> MarginFigures:
        return cls(
            visits=0,
            takings=0,
            refunds=0,
            coupons=0,
            commission=0,
            platform_net=0,
            store_net=0,
            written_off=0,
        )

    def plus(self, other: MarginFigures) -> MarginFigures:
        mine, theirs = self.model_dump(), other.model_dump()
        return MarginFigures(**{name: mine[name] + theirs[name] for name in mine})


class WeekMargin(MarginFigures):
    week: str = Field(pattern=WEEK_PATTERN)


class MarginRow(Forbid):
    key: str | None = Field(description="The region, store or technician (None: not known)")
    currency: Currency
    weeks: list[WeekMargin] = Field(description="Every week asked, the latest first")
    total: MarginFigures


class PlatformWeek(Forbid):
    week: str = Field(pattern=WEEK_PATTERN)
    currency: Currency
    commission: int
    coupons: int
    fees_kept: int = Field(
        description="Late-cancellation fees paid that week, less those given back that week"
    )
    net: int = Field(description="Commission less coupons, plus the fees kept")


class Margins(Forbid):
    by: MarginBy
    weeks: list[str] = Field(description="The weeks asked, the latest first")
    order: MarginOrder
    rows: list[MarginRow] = Field(
        description="Losing: the platform's worst margins first; making: its best first "
        "(each currency apart, in the order of their codes)"
    )
    more: int = Field(ge=0, description="Rows left out by the limit")
    platform: list[PlatformWeek] = Field(description="Every row's weeks added up, with fees")


RateOf = Mapping[tuple[str, str, str], int]  # (store, week, currency) -> basis points


def figures_of(summed: Summed, commission: int) -> MarginFigures:
    takings = sum(summed.by_kind.values())
    coupons = summed.by_kind.get(EntryKind.COUPON, 0)
    return MarginFigures(
        visits=summed.visits,
        takings=takings,
        refunds=-sum(amount for kind, amount in summed.by_kind.items() if kind in REFUND_KINDS),
        coupons=coupons,
        commission=commission,
        platform_net=commission - coupons,
        store_net=takings - commission,
        written_off=0,
    )


def commission_shares(takings: Sequence[int], rate_bps: int) -> list[int]:
    """The commission on each of a store's week's groups, in whole minor units adding up to
    the commission on the week (`commission_of`, as its statement rounds it): each group's
    exact share rounded down, the units left over to the largest remainders (ties: the
    first). Refunds outweighing takings give commission back."""
    exact = [Fraction(t * rate_bps, 10_000) for t in takings]
    floors = [math.floor(e) for e in exact]
    left = commission_of(sum(takings), rate_bps) - sum(floors)  # 0 <= left <= len(takings)
    by_remainder = sorted(range(len(exact)), key=lambda i: exact[i] - floors[i], reverse=True)
    for i in by_remainder[:left]:
        floors[i] += 1
    return floors


def _commissions(sums: Sequence[Summed], rate_of: RateOf, default_rate_bps: int) -> list[int]:
    """Each group's share of its store's week's commission: a statement rounds once, on the
    whole week, so the regions or technicians of a store's week add up to what it was
    settled."""
    by_statement: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for i, s in enumerate(sums):
        by_statement[s.store_id, s.week, s.currency].append(i)
    found = [0] * len(sums)
    for statement, members in by_statement.items():
        takings = [sum(sums[i].by_kind.values()) for i in members]
        shared = commission_shares(takings, rate_of.get(statement, default_rate_bps))
        for i, share in zip(members, shared, strict=True):
            found[i] = share
    return found


def margins_of(
    *,
    by: MarginBy,
    weeks: Sequence[str],
    sums: Iterable[Summed],
    written_off: Iterable[WrittenOff],
    fees: Iterable[FeesKept],
    rate_of: RateOf,
    default_rate_bps: int,
    order: MarginOrder,
    limit: int,
) -> Margins:
    """Each region, store or technician's figures week by week, ordered by what the platform
    made of them over those weeks (`losing`: least first; each currency apart), and the
    platform's own weeks."""
    sums = list(sums)
    cells: dict[tuple[str | None, str], dict[str, MarginFigures]] = defaultdict(dict)
    for s, commission in zip(sums, _commissions(sums, rate_of, default_rate_bps), strict=True):
        week = cells[s.key, s.currency]
        week[s.week] = week.get(s.week, MarginFigures.zero()).plus(figures_of(s, commission))
    for w in written_off:
        week = cells[w.key, w.currency]
        week[w.week] = week.get(w.week, MarginFigures.zero()).plus(
            MarginFigures.zero().model_copy(update={"written_off": w.amount})
        )
    rows = []
    for (key, currency), by_week in cells.items():
        row_weeks = [
            WeekMargin(**by_week.get(week, MarginFigures.zero()).model_dump(), week=week)
            for week in weeks
        ]
        total = MarginFigures.zero()
        for figures in row_weeks:
            total = total.plus(MarginFigures(**figures.model_dump(exclude={"week"})))
        rows.append(MarginRow(key=key, currency=currency, weeks=row_weeks, total=total))
    sign = -1 if order == "making" else 1
    rows.sort(key=lambda r: (r.currency, sign * r.total.platform_net, r.key or ""))
    return Margins(
        by=by,
        weeks=list(weeks),
        order=order,
        rows=rows[:limit],
        more=max(0, len(rows) - limit),
        platform=_platform(rows, weeks, fees),
    )


def _platform(
    rows: Sequence[MarginRow], weeks: Sequence[str], fees: Iterable[FeesKept]
) -> list[PlatformWeek]:
    kept: dict[tuple[str, str], int] = defaultdict(int)
    for f in fees:
        kept[f.week, f.currency] += f.amount
    currencies = sorted({r.currency for r in rows} | {currency for _, currency in kept})
    found = []
    for currency in currencies:
        for week in weeks:
            commission = coupons = 0
            for row in rows:
                if row.currency == currency:
                    figures = next(f for f in row.weeks if f.week == week)
                    commission += figures.commission
                    coupons += figures.coupons
            fees_kept = kept.get((week, currency), 0)
            found.append(
                PlatformWeek(
                    week=week,
                    currency=currency,
                    commission=commission,
                    coupons=coupons,
                    fees_kept=fees_kept,
                    net=commission - coupons + fees_kept,
                )
            )
    return found
