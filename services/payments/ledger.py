"""Prepaid cards, packages and stored value as a ledger, free of I/O.

A customer's holding (a monthly card, a package of visits, a stored-value
balance) is only its entries: the balance is their sum, nothing else is stored
that could disagree. The rules every change obeys:

- the balance never goes negative: a draw larger than what is spendable is refused;
- expired value cannot be spent, and expiring writes the rest off as an entry;
- a receipt draws from a holding once: a second draw for the same receipt is refused;
- a refund gives back at most what that receipt drew, and keeps it usable for a while
  even if the holding has expired, or is about to (be generous: the fault was ours).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import Field

from shared.errors import Conflict, Unprocessable
from shared.events.types import Currency, MinorUnits
from shared.schema import Forbid

REFUND_GRACE = timedelta(days=30)  # a refunded visit stays usable at least this long


class PlanKind(StrEnum):
    MONTHLY_CARD = "monthly_card"
    QUARTERLY_CARD = "quarterly_card"
    YEARLY_CARD = "yearly_card"
    PACKAGE = "package"  # N visits
    STORED_VALUE = "stored_value"  # money


CARD_DAYS = {PlanKind.MONTHLY_CARD: 30, PlanKind.QUARTERLY_CARD: 91, PlanKind.YEARLY_CARD: 365}


class Unit(StrEnum):
    VISIT = "visit"  # one unit covers one booked service, at its base price
    MONEY = "money"  # minor units of the holding's currency


class EntryKind(StrEnum):
    PURCHASE = "purchase"
    DRAW = "draw"
    REFUND = "refund"
    EXPIRY = "expiry"


class Entry(Forbid):
    entry_id: str
    kind: EntryKind
    units: int  # signed: purchases and refunds add, draws and expiry take
    at: datetime
    receipt_id: str | None = None
    note: str = ""


class Plan(Forbid):
    """What a store sells: a card for a period, a package of visits or a stored value."""

    plan_id: str
    store_id: str
    name: str = Field(min_length=1, max_length=120)
    kind: PlanKind
    price: MinorUnits
    currency: Currency
    visits: int | None = Field(default=None, ge=1, le=1000, description="Cards and packages")
    value: MinorUnits | None = Field(default=None, description="Stored value credited")
    covers: list[str] = Field(
        default_factory=list,
        max_length=50,
        description="Catalogue codes a visit unit pays for; empty: any of the store's services",
    )
    validity_days: int = Field(ge=1, le=3660)

    @property
    def unit(self) -> Unit:
        return Unit.MONEY if self.kind is PlanKind.STORED_VALUE else Unit.VISIT

    @property
    def units(self) -> int:
        amount = self.value if self.unit is Unit.MONEY else self.visits
        if amount is None:
            raise Unprocessable(f"a {self.kind.value} plan needs its {self.unit.value} amount")
        return amount


class Holding(Forbid):
    """One customer's card, package or balance: a ledger of entries."""

    holding_id: str
    customer_id: str
    store_id: str
    plan_id: str
    name: str
    kind: PlanKind
    unit: Unit
    currency: Currency
    covers: list[str] = Field(default_factory=list)
    price_paid: MinorUnits
    valid_from: datetime
    expires_at: datetime
    entries: list[Entry] = Field(default_factory=list)
    version: int = 0

    @property
    def balance(self) -> int:
        return sum(e.units for e in self.entries)

    def expired(self, at: datetime) -> bool:
        return at >= self.expires_at

    def spendable(self, at: datetime) -> int:
        if at < self.valid_from or self.expired(at):
            return 0
        return self.balance

    def covers_item(self, code: str) -> bool:
        return self.unit is Unit.VISIT and (not self.covers or code in self.covers)

    def drawn_for(self, receipt_id: str) -> int:
        """Units this receipt took, net of what was given back."""
        return -sum(
            e.units
            for e in self.entries
            if e.receipt_id == receipt_id and e.kind in (EntryKind.DRAW, EntryKind.REFUND)
        )

    def _add(
        self,
        kind: EntryKind,
        units: int,
        at: datetime,
        receipt_id: str | None = None,
        note: str = "",
    ) -> Entry:
        entry = Entry(
            entry_id=f"en_{uuid.uuid4().hex}",
            kind=kind,
            units=units,
            at=at,
            receipt_id=receipt_id,
            note=note,
        )
        self.entries.append(entry)
        return entry

    def draw(self, units: int, receipt_id: str, at: datetime) -> Entry:
        if units <= 0:
            raise Unprocessable("a draw takes a positive number of units")
        if any(e.kind is EntryKind.DRAW and e.receipt_id == receipt_id for e in self.entries):
            raise Conflict(f"receipt {receipt_id} already drew from {self.holding_id}")
        if self.expired(at):
            raise Conflict(f"{self.name} expired on {self.expires_at.date()}: it cannot be spent")
        if units > self.spendable(at):
            raise Conflict(
                f"{self.name} has {self.spendable(at)} {self.unit.value} left, not {units}"
            )
        return self._add(EntryKind.DRAW, -units, at, receipt_id=receipt_id)

    def refund(self, units: int, receipt_id: str, at: datetime, note: str = "") -> Entry:
        if units <= 0:
            raise Unprocessable("a refund gives back a positive number of units")
        if units > self.drawn_for(receipt_id):
            raise Conflict(
                f"receipt {receipt_id} drew {self.drawn_for(receipt_id)} {self.unit.value} "
                f"from {self.holding_id}: {units} cannot go back"
            )
        if self.expired(at):
            # What expired unused stays expired (its timer may not have run yet): only the
            # units given back get the grace.
            self.expire(at)
            self.expires_at = at + REFUND_GRACE
        else:
            # About to expire: the visit given back would go unused in a day or two. The
            # holding keeps going until the grace is over (its other units with it).
            self.expires_at = max(self.expires_at, at + REFUND_GRACE)
        return self._add(EntryKind.REFUND, units, at, receipt_id=receipt_id, note=note)

    def seen_by(self, *, store: bool) -> Holding:
        """A refund's why (a complaint's resolution) is not the store's to read."""
        if not store:
            return self
        entries = [
            e.model_copy(update={"note": ""}) if e.kind is EntryKind.REFUND else e
            for e in self.entries
        ]
        return self.model_copy(update={"entries": entries})

    def expire(self, at: datetime) -> Entry | None:
        """Write off what is left once the holding has expired (idempotent)."""
        if not self.expired(at) or self.balance <= 0:
            return None
        return self._add(EntryKind.EXPIRY, -self.balance, at, note="expired unused")


def sell(plan: Plan, holding_id: str, customer_id: str, at: datetime) -> Holding:
    """A customer buys a plan at the store: the holding starts with its purchase entry."""
    holding = Holding(
        holding_id=holding_id,
        customer_id=customer_id,
        store_id=plan.store_id,
        plan_id=plan.plan_id,
        name=plan.name,
        kind=plan.kind,
        unit=plan.unit,
        currency=plan.currency,
        covers=plan.covers,
        price_paid=plan.price,
        valid_from=at,
        expires_at=at + timedelta(days=CARD_DAYS.get(plan.kind, plan.validity_days)),
    )
    holding._add(EntryKind.PURCHASE, plan.units, at, note=f"bought {plan.name}")
    return holding
