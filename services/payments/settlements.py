"""Stores' weekly settlements, free of I/O.

A store's technicians do the work; the money for it comes in several ways, and
some of it the store holds already. Every movement of money on a store's signed
receipt is an entry of the store's ledger, derived from the receipt alone (so
the same receipt always gives the same entries, under the same ids, however
often it is saved):

| entry             | what happened                                   | takings | held |
|-------------------|-------------------------------------------------|---------|------|
| `card`            | the platform charged the customer's card        | +       |      |
| `cash`            | the store's technician took cash at the door    | +       | +    |
| `prepaid`         | drawn from a card or package the store sold     | +       | +    |
| `coupon`          | the platform's coupon took this much off        | +       |      |
| `refund`          | the platform gave money back (card, by hand)    | -       |      |
| `refund_declined` | the card would not take that refund back        | +       |      |
| `refund_prepaid`  | visits or value given back to the store's card  | -       | -    |

(`held`: the store holds that money already.)

A week's statement adds them up: the platform keeps its commission on the
takings, and pays the store the rest less what the store holds already (a
negative amount: the store owes the platform). A coupon is the platform's
gift, so the store is paid the full price; a refund comes off the takings, and
the commission on it goes back with it. What a visit written off still owed was
never paid, so it has no entry (what the customer's card, package or coupon paid
of it stands).

An entry belongs to the week it is *entered* in (payments' clock when it is
written), never a week gone by; a week is over only some time after it ends, by
when every unit of work that could have entered anything in it has committed:
its statements are then kept as they read (due), and operations close them.
Weeks run Monday to Monday, UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Literal

from pydantic import Field

from services.payments.domain import Receipt, Refund
from shared.errors import Conflict
from shared.events.types import WEEK_PATTERN, Currency
from shared.schema import Forbid
from shared.time import StoredTime, stored_precision


class EntryKind(StrEnum):
    CARD = "card"
    CASH = "cash"
    PREPAID = "prepaid"
    COUPON = "coupon"
    REFUND = "refund"
    REFUND_DECLINED = "refund_declined"
    REFUND_PREPAID = "refund_prepaid"


class Entry(Forbid):
    """One movement of money on a store's receipt."""

    entry_id: str = Field(description="The receipt's id, what moved, and which")
    store_id: str
    receipt_id: str
    booking_id: str
    technician_id: str
    region: str | None = Field(default=None, description="None: before receipts kept it")
    currency: Currency
    kind: EntryKind
    takings: int = Field(description="What it adds to the store's takings (negative: off)")
    held: int = Field(description="Of which the store holds the money already")
    at: datetime = Field(description="When the money moved")


class Entered(Entry):
    """An entry as the ledger keeps it: in the week it was entered."""

    week: str = Field(pattern=WEEK_PATTERN)
    entered_at: StoredTime


def entries_of(receipt: Receipt) -> list[Entry]:
    """Every movement of money on a signed receipt so far, each under an id of its own."""
    rid = receipt.receipt_id
    return [
        Entry(
            entry_id=f"{rid}:{key}",
            store_id=receipt.store_id,
            receipt_id=rid,
            booking_id=receipt.booking_id,
            technician_id=receipt.technician_id,
            region=receipt.region,
            currency=receipt.currency,
            kind=kind,
            takings=takings,
            held=held,
            at=at,
        )
        for key, kind, takings, held, at in _movements(receipt)
    ]


def entry_ids(receipt: Receipt) -> set[str]:
    """The ids `entries_of` gives, without making the entries (every receipt read asks)."""
    return {f"{receipt.receipt_id}:{key}" for key, *_ in _movements(receipt)}


def _movements(receipt: Receipt) -> list[Found]:
    if not receipt.signed or receipt.signature is None:
        return []
    signed_at = receipt.signature.signed_at
    found: list[Found] = []
    for i, draw in enumerate(receipt.prepaid):
        found.append((f"prepaid:{i}", EntryKind.PREPAID, draw.amount, draw.amount, signed_at))
    for i, discount in enumerate(receipt.discounts):
        found.append((f"coupon:{i}", EntryKind.COUPON, discount.amount, 0, signed_at))
    for i, payment in enumerate(receipt.payments):  # appended to, never reordered
        if payment.method == "cash":
            found.append((f"paid:{i}", EntryKind.CASH, payment.amount, payment.amount, payment.at))
        else:
            found.append((f"paid:{i}", EntryKind.CARD, payment.amount, 0, payment.at))
    for refund in receipt.refunds:
        found += _refund_entries(refund)
    return found


Found = tuple[str, EntryKind, int, int, datetime]  # key, kind, takings, held, at


def _refund_entries(refund: Refund) -> list[Found]:
    key = f"refund:{refund.refund_id}"
    found: list[Found] = []
    for j, part in enumerate(refund.parts):
        if part.to == "holding":
            found.append(
                (f"{key}:{j}", EntryKind.REFUND_PREPAID, -part.amount, -part.amount, refund.at)
            )
        elif part.to == "provider":
            # Sent to the card: off the takings now, back on them if the card refuses it.
            found.append((f"{key}:{j}", EntryKind.REFUND, -part.amount, 0, refund.at))
            if part.declined is not None:
                found.append(
                    (f"{key}:{j}:declined", EntryKind.REFUND_DECLINED, part.amount, 0, refund.at)
                )
    # Cash to hand back, or what the card refused, goes when operations record it given (all
    # the refund owed, at once): what they gave.
    repayment = next((part.repaid for part in refund.parts if part.repaid is not None), None)
    if repayment is not None:
        given = repayment.amount
        if given is None:  # repaid before what it gave was kept
            given = sum(part.amount for part in refund.parts if part.repaid is not None)
        found.append((f"{key}:repaid", EntryKind.REFUND, -given, 0, repayment.at))
    return found


# ---------------------------------------------------------------------------- weeks --


def week_of(at: datetime) -> str:
    year, week, _ = at.astimezone(UTC).isocalendar()
    return f"{year}-W{week:02d}"


def week_start(week: str) -> datetime:
    """Monday 00:00 UTC of an ISO week ("2026-W48"); ValueError if there is no such week."""
    year, number = int(week[:4]), int(week[6:])
    try:
        return datetime.fromisocalendar(year, number, 1).replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"{year} has no week {number}") from None


def week_end(week: str) -> datetime:
    return week_start(week) + timedelta(days=7)


def week_after(week: str) -> str:
    return week_of(week_end(week))


def week_before(week: str) -> str:
    return week_of(week_start(week) - timedelta(days=7))


# ----------------------------------------------------------------------- statements --


class Totals(Forbid):
    """A week's entries of one store in one currency, added up by kind."""

    visits: int = Field(ge=0, description="Receipts with money moving that week")
    by_kind: dict[EntryKind, int] = Field(description="Takings by kind of entry")
    held: int


def commission_of(takings: int, rate_bps: int) -> int:
    """The commission on `takings` at `rate_bps` hundredths of a percent, to the nearest
    minor unit (halves away from zero, so a refund gives back what the visit took)."""
    whole, rest = divmod(abs(takings) * rate_bps, 10_000)
    rounded = whole + (1 if rest * 2 >= 10_000 else 0)
    return rounded if takings >= 0 else -rounded


StatementStatus = Literal["open", "due", "closed"]


class Statement(Forbid):
    """What a store earned in a week, what the platform keeps, and who pays whom."""

    statement_id: str
    store_id: str
    week: str = Field(pattern=WEEK_PATTERN)
    currency: Currency
    starts_at: datetime
    ends_at: datetime
    status: StatementStatus = Field(
        description="open: the week is not over (entries still come in); due: it is, "
        "operations settle it; closed: settled, final"
    )
    visits: int
    by_kind: dict[EntryKind, int]
    takings: int = Field(description="Everything the store's visits brought in, less refunds")
    commission_rate_bps: int = Field(description="The platform's share, in 1/100 of a percent")
    commission: int
    held_by_store: int = Field(description="Of the takings, what the store holds already")
    payable: int = Field(
        description="What the platform pays the store (negative: what the store owes it)"
    )
    closed_at: StoredTime | None = None
    closed_by: str | None = None  # operations' own
    reference: str | None = Field(default=None, description="The transfer that settled it")
    version: int = 0

    @classmethod
    def of(
        cls,
        *,
        store_id: str,
        week: str,
        currency: str,
        totals: Totals,
        rate_bps: int,
        now: datetime,
        close_after: timedelta,
    ) -> Statement:
        takings = sum(totals.by_kind.values())
        commission = commission_of(takings, rate_bps)
        ends = week_end(week)
        return cls(
            statement_id=statement_id(store_id, week, currency),
            store_id=store_id,
            week=week,
            currency=currency,
            starts_at=week_start(week),
            ends_at=ends,
            status="open" if now < ends + close_after else "due",
            visits=totals.visits,
            by_kind=totals.by_kind,
            takings=takings,
            commission_rate_bps=rate_bps,
            commission=commission,
            held_by_store=totals.held,
            payable=takings - commission - totals.held,
        )

    def seen_by(self, ops: bool) -> Statement:
        """Who closed it is operations' own."""
        return self if ops else self.model_copy(update={"closed_by": None})

    def close(self, by: str, reference: str, payable_seen: int, at: datetime) -> bool:
        """Close it as settled by `reference`; False if it was closed so already.

        `payable_seen` is what operations were shown: a statement that reads differently
        now (its rate changed) is not closed on their behalf."""
        if self.status == "closed":
            if self.reference == reference:
                return False
            raise Conflict(
                f"the statement of {self.store_id} for {self.week} was closed already, "
                f"settled by {self.reference}",
                field="reference",
            )
        if self.status == "open":
            raise Conflict(
                f"the week {self.week} is not over for settling: entries may still come in "
                "until a while after it ends",
                field="week",
            )
        if payable_seen != self.payable:
            raise Conflict(
                f"the statement reads differently now: {self.payable} payable, not "
                f"{payable_seen}; look at it again",
                field="payable",
            )
        self.status, self.closed_at, self.closed_by = "closed", stored_precision(at), by
        self.reference = reference
        return True


def statement_id(store_id: str, week: str, currency: str) -> str:
    return f"{store_id}:{week}:{currency}"
