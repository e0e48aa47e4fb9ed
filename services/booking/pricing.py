"""The published catalogue and its prices, free of I/O.

Transparent pricing is the point: a customer sees one price per item and region
before booking, nothing can be billed that is not in the catalogue, and a
booking keeps the prices in force when it was made (the receipt is built from
those, never from today's prices).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Annotated
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from shared.errors import Unprocessable
from shared.events.types import Currency, MinorUnits, PricedLine

# How often recurring care may come round: at least a week between a visit and the reminder
# a week before the next one, at most three years.
MIN_CARE_DAYS, MAX_CARE_DAYS = 14, 3 * 365


class ItemKind(StrEnum):
    SERVICE = "service"  # work a technician performs
    PRODUCT = "product"  # something used or sold during a visit


class CatalogueItem(BaseModel):
    """A service item or product, as a partner store (or the platform) publishes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str
    kind: ItemKind
    name: str
    category: str
    description: str = ""  # what is included
    duration_minutes: int = 0  # products take no time of their own
    skill: str | None = None  # a technician must have it (services)
    certificate: str | None = None  # and hold it, valid on the visit date
    store_id: str | None = None  # the publishing partner store; None = the platform
    # Recurring care: due again this many days after it is done (a water filter every 90).
    care_every_days: int | None = Field(default=None, ge=MIN_CARE_DAYS, le=MAX_CARE_DAYS)


class PriceVersion(BaseModel):
    """One published price of one item in one region, in force from `effective_from`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str
    region: str
    unit_price: MinorUnits
    currency: Currency
    effective_from: datetime
    after_hours_surcharge: MinorUnits = 0  # per unit, when the window is outside service hours
    urgent_surcharge: MinorUnits = 0  # per unit, for an urgent (night or emergency) visit
    cancellation_fee: MinorUnits = 0  # per line, when cancelled after the free cut-off
    free_cancellation_hours: int = Field(default=24, ge=0, le=24 * 14)


def price_in_force(versions: Iterable[PriceVersion], at: datetime) -> PriceVersion | None:
    """The latest version that took effect at or before `at`."""
    current: PriceVersion | None = None
    for version in versions:
        if version.effective_from <= at and (
            current is None or version.effective_from > current.effective_from
        ):
            current = version
    return current


class Timing(StrEnum):
    WINDOW = "window"  # a window the customer chose
    ASAP = "asap"  # as soon as a technician can come
    URGENT = "urgent"  # night or emergency, with its surcharge


# A wall-clock time in the region's own zone: "08:00", never with an offset (JSON Schema's
# "time" format demands one, which would misstate it).
LocalTime = Annotated[
    time,
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?$",
            "description": "Local time in the region's time zone",
            "examples": ["08:00"],
        }
    ),
]


class ServiceHours(BaseModel):
    """A region's regular hours, in its own time zone. Outside them is after-hours."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str
    opens: LocalTime
    closes: LocalTime

    def covers(self, start: datetime, end: datetime) -> bool:
        """Does the whole window lie inside one day's regular hours?"""
        zone = ZoneInfo(self.timezone)
        local_start, local_end = start.astimezone(zone), end.astimezone(zone)
        if local_start.date() != local_end.date() and local_end.time() != time(0):
            return False
        closes_at = local_start.replace(
            hour=self.closes.hour, minute=self.closes.minute, second=0, microsecond=0
        )
        return local_start.time() >= self.opens and local_end <= closes_at


class LineTerms(BaseModel):
    """The price terms of one booked line, kept on the booking for its whole life."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str
    kind: ItemKind
    name: str
    skill: str | None
    certificate: str | None
    quantity: int
    duration_minutes: int
    price: PriceVersion


class Quote(BaseModel):
    """What the customer sees before confirming: every line, every surcharge, the total."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lines: list[PricedLine]
    total: MinorUnits
    currency: Currency
    after_hours: bool
    urgent: bool
    duration_minutes: int
    cancellation_fee: MinorUnits
    free_cancellation_until: datetime


@dataclass(frozen=True)
class Requested:
    code: str
    quantity: int


MAX_QUANTITY = 20


def terms_for(
    items: Mapping[str, CatalogueItem],
    prices: Mapping[str, Sequence[PriceVersion]],
    requested: Sequence[Requested],
    region: str,
    at: datetime,
) -> list[LineTerms]:
    """Resolve each requested item to the price in force in `region` at `at`.

    `prices` holds each code's versions in that region. Raises `Unprocessable`
    naming the offending field.
    """
    if not requested:
        raise Unprocessable("a booking needs at least one item", field="items")
    terms: list[LineTerms] = []
    seen: set[str] = set()
    for index, line in enumerate(requested):
        field = f"items.{index}"
        item = items.get(line.code)
        if item is None:
            raise Unprocessable(f"unknown catalogue item {line.code!r}", field=f"{field}.code")
        if line.code in seen:
            raise Unprocessable(f"item {line.code!r} is listed twice", field=f"{field}.code")
        seen.add(line.code)
        if not 1 <= line.quantity <= MAX_QUANTITY:
            raise Unprocessable(
                f"quantity must be between 1 and {MAX_QUANTITY}", field=f"{field}.quantity"
            )
        price = price_in_force(prices.get(line.code, ()), at)
        if price is None:
            raise Unprocessable(
                f"item {line.code!r} is not sold in region {region!r}", field=f"{field}.code"
            )
        terms.append(
            LineTerms(
                code=item.code,
                kind=item.kind,
                name=item.name,
                skill=item.skill,
                certificate=item.certificate,
                quantity=line.quantity,
                duration_minutes=item.duration_minutes * line.quantity,
                price=price,
            )
        )
    if not any(t.kind is ItemKind.SERVICE for t in terms):
        raise Unprocessable("a booking needs at least one service item", field="items")
    if len({t.price.currency for t in terms}) != 1:
        raise Unprocessable("items are priced in different currencies", field="items")
    return terms


def store_for(
    items: Mapping[str, CatalogueItem], requested: Sequence[Requested], asked: str | None
) -> str | None:
    """The partner store whose technicians alone may do the visit, or None for anyone
    qualified. A store's own items are its to do; otherwise the store the customer asked
    for (the one whose card or package they hold: it pays only for its technicians' visits).
    """
    publishers: dict[str, str] = {}  # store -> the first of its items booked
    for line in requested:
        item = items.get(line.code)
        if item is not None and item.store_id is not None:
            publishers.setdefault(item.store_id, line.code)
    if len(publishers) > 1:
        (a, code_a), (b, code_b) = sorted(publishers.items())[:2]
        raise Unprocessable(
            f"{code_a!r} is {a}'s and {code_b!r} is {b}'s: a visit comes from one store, so "
            "book each store's items separately",
            field="items",
        )
    if not publishers:
        return asked
    ((publisher, code),) = publishers.items()
    if asked is not None and asked != publisher:
        raise Unprocessable(
            f"{code!r} is {publisher}'s own service: only its technicians do it, not {asked}'s",
            field="store_id",
        )
    return publisher


def quote(
    terms: Sequence[LineTerms], window_start: datetime, *, after_hours: bool, urgent: bool
) -> Quote:
    """Price the lines from their kept terms; surcharges are itemised per line."""
    lines: list[PricedLine] = []
    for t in terms:
        surcharge = (t.price.after_hours_surcharge if after_hours else 0) + (
            t.price.urgent_surcharge if urgent else 0
        )
        lines.append(
            PricedLine(
                code=t.code,
                name=t.name,
                skill=t.skill or "",
                kind=t.kind.value,
                quantity=t.quantity,
                unit_price=t.price.unit_price,
                surcharge=surcharge,
                currency=t.price.currency,
            )
        )
    cutoff = max(t.price.free_cancellation_hours for t in terms)
    return Quote(
        lines=lines,
        total=sum(line.amount for line in lines),
        currency=terms[0].price.currency,
        after_hours=after_hours,
        urgent=urgent,
        duration_minutes=sum(t.duration_minutes for t in terms),
        cancellation_fee=sum(t.price.cancellation_fee for t in terms),
        free_cancellation_until=window_start - timedelta(hours=cutoff),
    )


def cancellation_fee(q: Quote, at: datetime) -> int:
    """Free until the cut-off before the window; the catalogue's fee after it."""
    return 0 if at < q.free_cancellation_until else q.cancellation_fee
