"""Dispatch rules, free of I/O: technicians' files, who may be sent, the visit and the door check.

Everything here is decided from values handed in (the technician's file, their
other commitments, the clock, the visit-code key), so each rule is unit-tested
without MongoDB or Kafka; `storage.py` finds the candidates with a geo index and
`commands.py` applies these rules inside units of work.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from shared.errors import Conflict, Forbidden, Locked, Unprocessable
from shared.events.dispatch import VisitStage
from shared.events.types import GeoPoint, GeoPolygon, PricedLine
from shared.privacy import Phone, mask_phone
from shared.schema import Forbid

# Travel between two addresses: straight-line distance stretched to roads, at city speed.
ROAD_FACTOR = 1.3
CITY_SPEED_KMH = 25.0
# Nobody travels longer than this between visits; bounds the calendar read.
MAX_TRAVEL = timedelta(hours=3)

# Ranking: cost in "kilometres"; a point of rating is worth 4 km, a visit already
# given today 3 km; the customer's favourite wins whenever they are free.
RATING_WEIGHT_KM = 4.0
LOAD_WEIGHT_KM = 3.0
NEUTRAL_RATING = 4.5  # new technicians are neither punished nor favoured
FAVOURITE_BONUS_KM = 1_000.0


Name = Annotated[str, Field(min_length=1, max_length=120)]


# ------------------------------------------------------------ the personal file --
class TechnicianStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"  # never dispatched (operations, or a quality decision)


class Certificate(Forbid):
    name: Name = Field(examples=["gel-nails"])
    issuer: Name
    expires_on: date


class Insurance(Forbid):
    insurer: Name
    policy_number: Annotated[str, Field(min_length=1, max_length=64)]
    expires_on: date


class Shift(Forbid):
    """A weekly shift in the technician's time zone; `end <= start` ends the next day."""

    weekday: int = Field(ge=0, le=6, description="0 = Monday")
    start: time
    end: time


class ShiftException(Forbid):
    """Leave (the whole day, or `start`-`end`) or an extra shift on one date."""

    on: date
    kind: Literal["leave", "extra"]
    start: time | None = None
    end: time | None = None

    @model_validator(mode="after")
    def _times(self) -> ShiftException:
        if (self.start is None) != (self.end is None):
            raise ValueError("give both start and end, or neither")
        if self.kind == "extra" and self.start is None:
            raise ValueError("an extra shift needs start and end")
        return self


class TechnicianFile(Forbid):
    """The personal file, as operations or the technician's store keep it."""

    full_name: str = Field(min_length=2, max_length=200)
    badge_number: str = Field(min_length=3, max_length=32, pattern=r"^[A-Z0-9-]+$")
    photo_url: str | None = Field(default=None, max_length=500, pattern=r"^https://\S+$")
    phone: Phone | None = Field(default=None, description="Private: operations and the store")
    store_id: str = Field(min_length=1, max_length=64)
    skills: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        min_length=1, max_length=50
    )
    certificates: list[Certificate] = Field(default_factory=list, max_length=50)
    insurance: Insurance | None = None
    areas: list[GeoPolygon] = Field(min_length=1, max_length=20, description="Served areas")
    timezone: str = Field(default="Europe/Lisbon", examples=["Europe/Lisbon"])
    shifts: list[Shift] = Field(default_factory=list, max_length=50)
    exceptions: list[ShiftException] = Field(default_factory=list, max_length=400)
    status: TechnicianStatus = TechnicianStatus.ACTIVE
    location: GeoPoint = Field(description="Where they start from; then the live location")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class Technician(TechnicianFile):
    technician_id: str
    rating: float | None = Field(default=None, ge=0, le=5)
    location_at: datetime | None = None
    schedule_version: int = 0  # bumped by every reservation: two reservations, one winner
    # A complaint's suspension, or a safety alert's that stopped their visit: only
    # operations lift either (the store could otherwise undo it).
    suspended_for_complaint: str | None = None
    suspended_for_alert: str | None = None

    def identity(self) -> TechnicianIdentity:
        return TechnicianIdentity(
            technician_id=self.technician_id,
            name=self.full_name,
            badge_number=self.badge_number,
            photo_url=self.photo_url,
            rating=self.rating,
            certificates=sorted({c.name for c in self.certificates}),
            store_id=self.store_id,
            phone_masked=mask_phone(self.phone) if self.phone else None,
        )

    def shift_intervals(self, around: datetime) -> list[tuple[datetime, datetime]]:
        """Working intervals (aware datetimes) on the days around `around`, leave removed."""
        zone = ZoneInfo(self.timezone)
        local_day = around.astimezone(zone).date()
        days = [local_day + timedelta(days=d) for d in (-1, 0, 1)]
        leave_days = {e.on for e in self.exceptions if e.kind == "leave" and e.start is None}
        out: list[tuple[datetime, datetime]] = []
        for day in days:
            if day in leave_days:
                continue
            for shift in self.shifts:
                if shift.weekday == day.weekday():
                    out.append(_interval(day, shift.start, shift.end, zone))
            for extra in self.exceptions:
                if extra.kind == "extra" and extra.on == day and extra.start and extra.end:
                    out.append(_interval(day, extra.start, extra.end, zone))
        return out

    def partial_leave(self, around: datetime) -> list[tuple[datetime, datetime]]:
        zone = ZoneInfo(self.timezone)
        local_day = around.astimezone(zone).date()
        return [
            _interval(e.on, e.start, e.end, zone)
            for e in self.exceptions
            if e.kind == "leave" and e.start and e.end and abs((e.on - local_day).days) <= 1
        ]

    def on_shift(self, start: datetime, end: datetime) -> bool:
        """On shift for the whole of [start, end], and not on leave during any of it."""
        # Back-to-back shifts are one stretch of work: a visit may run across midnight.
        covered = any(s <= start and end <= e for s, e in _joined(self.shift_intervals(start)))
        on_leave = any(s < end and start < e for s, e in self.partial_leave(start))
        return covered and not on_leave


def _joined(intervals: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """Intervals that touch or overlap, joined into one."""
    joined: list[tuple[datetime, datetime]] = []
    for s, e in sorted(intervals):
        if joined and s <= joined[-1][1]:
            joined[-1] = (joined[-1][0], max(joined[-1][1], e))
        else:
            joined.append((s, e))
    return joined


def _interval(day: date, start: time, end: time, zone: ZoneInfo) -> tuple[datetime, datetime]:
    begins = datetime.combine(day, start, zone)
    ends = datetime.combine(day + timedelta(days=1) if end <= start else day, end, zone)
    return begins, ends


class TechnicianIdentity(Forbid):
    """What the customer checks at the door: public, never the whole phone number."""

    technician_id: str
    name: str
    badge_number: str
    photo_url: str | None = None
    rating: float | None = None
    certificates: list[str] = Field(default_factory=list)
    store_id: str | None = None  # the partner store that sends them
    phone_masked: str | None = None  # enough to recognise their call


# ------------------------------------------------------------------- matching --
@dataclass(frozen=True)
class Need:
    """What one visit asks of a technician."""

    location: GeoPoint
    start: datetime
    end: datetime  # the technician is busy until then
    skills: tuple[str, ...]
    certificates: tuple[str, ...]
    store_id: str | None = None  # only this store's technicians (None: anyone qualified)


@dataclass(frozen=True)
class Commitment:
    """Time a technician already holds (an offer or a visit), and where."""

    start: datetime
    end: datetime
    location: GeoPoint


def travel_time(a: GeoPoint, b: GeoPoint) -> timedelta:
    return timedelta(hours=a.distance_m(b) * ROAD_FACTOR / 1000 / CITY_SPEED_KMH)


def fits_calendar(need: Need, commitments: Iterable[Commitment]) -> bool:
    """No overlap with any commitment, counting the travel from one address to the next."""
    for c in commitments:
        gap = travel_time(c.location, need.location)
        if not (c.end + gap <= need.start or need.end + gap <= c.start):
            return False
    return True


def point_in_polygon(point: GeoPoint, polygon: GeoPolygon) -> bool:
    """Ray casting on [lon, lat]: inside the outer ring and outside every hole."""

    def inside(ring: Sequence[tuple[float, float]]) -> bool:
        x, y, hit = point.lon, point.lat, False
        for (x1, y1), (x2, y2) in itertools.pairwise(ring):
            if (y1 > y) != (y2 > y) and x < (x2 - x1) * (y - y1) / (y2 - y1) + x1:
                hit = not hit
        return hit

    outer, *holes = polygon.coordinates
    return inside(outer) and not any(inside(h) for h in holes)


def unqualified(tech: Technician, need: Need) -> str | None:
    """The file's rules: active, skills, certificates and insurance valid that day, area."""
    if tech.status is not TechnicianStatus.ACTIVE:
        return "suspended"
    if need.store_id is not None and tech.store_id != need.store_id:
        return f"not one of {need.store_id}'s technicians (the booking is that store's)"
    missing = set(need.skills) - set(tech.skills)
    if missing:
        return f"lacks skill {sorted(missing)[0]}"
    visit_day = need.start.astimezone(ZoneInfo(tech.timezone)).date()
    for name in need.certificates:
        if not any(c.name == name and c.expires_on >= visit_day for c in tech.certificates):
            return f"no valid certificate {name} on {visit_day}"
    if tech.insurance is None or tech.insurance.expires_on < visit_day:
        return f"not insured on {visit_day}"
    serves = any(point_in_polygon(need.location, area) for area in tech.areas)
    return None if serves else "does not serve this address"


def why_not(tech: Technician, need: Need, commitments: Iterable[Commitment]) -> str | None:
    """The first rule that keeps this technician from this visit, or None if they may go."""
    reason = unqualified(tech, need)
    if reason is None and not tech.on_shift(need.start, need.end):
        reason = "not on shift for the whole window"
    if reason is None and not fits_calendar(need, commitments):
        reason = "busy (another visit, counting travel time)"
    return reason


def cost_km(distance_m: float, rating: float | None, given_today: int, favourite: bool) -> float:
    """Lower is better: distance, then rating and fairness, the favourite first when free."""
    score = (
        distance_m / 1000
        + RATING_WEIGHT_KM * (5 - (NEUTRAL_RATING if rating is None else rating))
        + LOAD_WEIGHT_KM * given_today
    )
    return score - FAVOURITE_BONUS_KM if favourite else score


Costs = Sequence[dict[str, float]]  # per waiting visit: technician id -> cost (feasible only)


def match_optimal(costs: Costs) -> list[str | None]:
    """Minimum total cost, one technician per visit (Hungarian method, scipy)."""
    # Imported here, not above: the gateway imports this module for dispatch's schemas, and
    # numpy with scipy would be 70 MB of its memory. Dispatch loads them at start (app.py).
    import numpy as np  # noqa: PLC0415
    from scipy.optimize import linear_sum_assignment  # noqa: PLC0415

    techs = sorted({t for row in costs for t in row})
    if not techs:
        return [None] * len(costs)
    column = {t: j for j, t in enumerate(techs)}
    big = 1e9  # a pair that is not allowed
    matrix = np.full((len(costs), len(techs)), big)
    for i, row in enumerate(costs):
        for tech, c in row.items():
            matrix[i, column[tech]] = c
    rows, cols = linear_sum_assignment(matrix)
    chosen: list[str | None] = [None] * len(costs)
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        if matrix[r, c] < big:
            chosen[r] = techs[c]
    return chosen


def match_greedy(costs: Costs) -> list[str | None]:
    """One by one in arrival order, each visit takes its cheapest free technician."""
    taken: set[str] = set()
    chosen: list[str | None] = []
    for row in costs:
        free = [(c, t) for t, c in row.items() if t not in taken]
        pick = min(free)[1] if free else None
        if pick:
            taken.add(pick)
        chosen.append(pick)
    return chosen


# ---------------------------------------------------------------------- visit --
class VisitStatus(StrEnum):
    SEARCHING = "searching"  # waiting for the next matching round
    OFFERED = "offered"  # one technician holds an offer with a deadline
    ASSIGNED = "assigned"
    EN_ROUTE = "en_route"
    ARRIVED = "arrived"
    IDENTITY_CONFIRMED = "identity_confirmed"
    IN_SERVICE = "in_service"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"  # nobody could be found: operations assign by hand
    HALTED = "halted"  # a safety alert stopped the visit


V = VisitStatus
# The technician's time is held in these states: the reservation is the visit itself.
HOLDS_TIME = frozenset(
    {V.OFFERED, V.ASSIGNED, V.EN_ROUTE, V.ARRIVED, V.IDENTITY_CONFIRMED, V.IN_SERVICE}
)
# The technician is working on the visit (or on the way to it).
UNDER_WAY = frozenset({V.EN_ROUTE, V.ARRIVED, V.IDENTITY_CONFIRMED, V.IN_SERVICE})
# Accepted and not finished: the technician's current jobs.
ACCEPTED = frozenset({V.ASSIGNED, *UNDER_WAY})
# Before arrival a technician can still drop out or be replaced.
REPLACEABLE = frozenset({V.OFFERED, V.ASSIGNED, V.EN_ROUTE})
# Why a new window can no longer move the visit (booking refuses one as well once the
# technician set off; this is a reschedule that crossed that step on its way here).
TOO_LATE_TO_MOVE = {
    V.EN_ROUTE: "the technician had already set off",
    V.ARRIVED: "the technician was already at the door",
    V.IDENTITY_CONFIRMED: "the technician was already at the door",
    V.IN_SERVICE: "the service had already begun",
    V.COMPLETED: "the visit was already done",
    V.HALTED: "a safety alert had stopped the visit",
}
# The steps of a visit the customer follows, as its status names them.
STAGES: dict[VisitStatus, VisitStage] = {
    V.ASSIGNED: "assigned",
    V.EN_ROUTE: "en_route",
    V.ARRIVED: "arrived",
    V.IDENTITY_CONFIRMED: "identity_confirmed",
    V.IN_SERVICE: "in_service",
    V.COMPLETED: "completed",
}


class OfferStatus(StrEnum):
    OPEN = "open"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"


class Offer(Forbid):
    offer_id: str
    technician_id: str
    made_at: datetime
    deadline: datetime
    status: OfferStatus = OfferStatus.OPEN
    answered_at: datetime | None = None


class AlertKind(StrEnum):
    WRONG_CODE_LOCKOUT = "wrong_code_lockout"
    NOT_THE_PERSON = "not_the_person"
    CHECK_IN_FAR = "check_in_far_from_address"
    TECHNICIAN_LATE = "technician_late"  # not checked in when the visit should have begun


# The alerts that stop a visit at the door; its technician gets no work until operations
# have looked into it (an impostor, or a stolen phone, must not be sent to the next home).
HALTING_ALERTS = frozenset({AlertKind.WRONG_CODE_LOCKOUT, AlertKind.NOT_THE_PERSON})


class RaisedAlert(Forbid):
    """A safety alert as operations work it: raised by the platform, acknowledged by a person."""

    alert_id: str
    booking_id: str
    visit_id: str
    customer_id: str | None = Field(description="Operations' to know (null for a store)")
    technician_id: str | None
    store_id: str | None
    kind: AlertKind
    severity: Literal["critical", "warning"]
    detail: str
    raised_at: datetime
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    note: str | None = None
    version: int = 0

    def seen_by(self, ops: bool) -> RaisedAlert:
        """A store follows its technicians' alerts and what is being done: not which customer
        raised it, nor which staff member took it."""
        if ops:
            return self
        by = "operations" if self.acknowledged_by is not None else None
        return self.model_copy(update={"customer_id": None, "acknowledged_by": by})

    def acknowledge(self, by: str, note: str, at: datetime) -> None:
        if self.acknowledged_at is not None:
            raise Conflict(
                f"alert {self.alert_id} was acknowledged by {self.acknowledged_by} "
                f"at {self.acknowledged_at.isoformat()}"
            )
        self.acknowledged_by, self.acknowledged_at, self.note = by, at, note


class CodeResult(StrEnum):
    CONFIRMED = "confirmed"
    WRONG = "wrong"
    LOCKED = "locked"


class Visit(Forbid):
    visit_id: str
    booking_id: str
    customer_id: str
    region: str
    location: GeoPoint
    window_start: datetime
    window_end: datetime
    duration_minutes: int
    lines: list[PricedLine]
    certificates: list[str] = Field(default_factory=list)
    preferred_technician_id: str | None = None
    store_id: str | None = None  # only this store's technicians go (the booking's store)
    booked_at: datetime
    search_deadline: datetime

    status: VisitStatus = VisitStatus.SEARCHING
    technician_id: str | None = None  # who holds the time: offered or assigned
    technician: TechnicianIdentity | None = None  # who accepted (what the customer sees)
    previous: TechnicianIdentity | None = None  # being replaced; the customer is told both
    offers: list[Offer] = Field(default_factory=list)
    passed_over: list[str] = Field(default_factory=list)  # declined, silent or dropped
    assignment: int = 0  # every assignment issues a new visit code
    code_digest: str | None = None
    code_attempts: int = 0
    arrived_at: datetime | None = None
    arrival_distance_m: float | None = None
    identity_confirmed_at: datetime | None = None
    identity_method: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    performed: list[PricedLine] = Field(default_factory=list)
    voided_at: datetime | None = None  # completed, but the booking had been cancelled first
    alerts: list[AlertKind] = Field(default_factory=list)
    late_for: int | None = None  # the assignment operations were told was late (once each)
    failure: str | None = None
    version: int = 0

    def stage(self) -> VisitStage:
        """The last step the customer follows that the visit reached (a halted visit: the
        step it was stopped at, as far as it shows; before the door, "assigned")."""
        if self.status in STAGES:
            return STAGES[self.status]
        reached: tuple[tuple[datetime | None, VisitStage], ...] = (  # halted: never completed
            (self.started_at, "in_service"),
            (self.identity_confirmed_at, "identity_confirmed"),
            (self.arrived_at, "arrived"),
        )
        return next((stage for at, stage in reached if at is not None), "assigned")

    @property
    def halted_by(self) -> AlertKind | None:
        """The safety alert that stopped the visit, if one did."""
        if self.status is not V.HALTED:
            return None
        return next((a for a in reversed(self.alerts) if a in HALTING_ALERTS), None)

    # -- arrival --
    @property
    def arrive_by(self) -> datetime:
        """The latest check-in that still ends the visit within its window (its start, when
        the work is longer than the window)."""
        return max(self.window_start, self.window_end - timedelta(minutes=self.duration_minutes))

    def late_check_at(self, grace: timedelta, assigned_at: datetime, travel: timedelta) -> datetime:
        """When to look for a check-in: `grace` past the latest arrival, or past the earliest
        the technician assigned at `assigned_at` could be there (assigned late in the window)."""
        return max(self.arrive_by, assigned_at + travel) + grace

    def late(self, now: datetime, check_at: datetime) -> bool:
        """Operations should hear now that nobody has checked in (once per assignment, and
        once per window: the same technician confirmed for a new one may be late again)."""
        return (
            self.status in (V.ASSIGNED, V.EN_ROUTE)
            and now >= check_at
            and self.late_for != self.assignment
        )

    # -- matching --
    @property
    def busy_until(self) -> datetime:
        return max(self.window_end, self.window_start + timedelta(minutes=self.duration_minutes))

    def need(self) -> Need:
        return Need(
            location=self.location,
            start=self.window_start,
            end=self.busy_until,
            skills=tuple(sorted({line.skill for line in self.lines if line.skill})),
            certificates=tuple(sorted(set(self.certificates))),
            store_id=self.store_id,
        )

    def commitment(self) -> Commitment:
        return Commitment(self.window_start, self.busy_until, self.location)

    @property
    def open_offer(self) -> Offer | None:
        return next((o for o in self.offers if o.status is OfferStatus.OPEN), None)

    def offer(self, technician_id: str, now: datetime, timeout: timedelta) -> Offer:
        if self.status is not V.SEARCHING:
            raise Conflict(f"visit {self.visit_id} is {self.status}, not searching")
        offer = Offer(
            offer_id=f"of_{uuid.uuid4().hex}",
            technician_id=technician_id,
            made_at=now,
            deadline=now + timeout,
        )
        self.offers.append(offer)
        self.status, self.technician_id = V.OFFERED, technician_id
        return offer

    def answerable(self, offer_id: str, technician_id: str, now: datetime) -> Offer:
        offer = next((o for o in self.offers if o.offer_id == offer_id), None)
        if offer is None:
            raise Conflict(f"offer {offer_id} is not on visit {self.visit_id}")
        if offer.technician_id != technician_id:
            raise Forbidden(f"offer {offer_id} was made to another technician")
        if offer.status is not OfferStatus.OPEN:
            raise Conflict(f"offer {offer_id} is already {offer.status}", field="offer_id")
        if now > offer.deadline:
            raise Conflict(f"offer {offer_id} expired at {offer.deadline.isoformat()}")
        return offer

    def accept(self, offer_id: str, tech: Technician, now: datetime) -> None:
        offer = self.answerable(offer_id, tech.technician_id, now)
        offer.status, offer.answered_at = OfferStatus.ACCEPTED, now
        self._assign(tech.identity())

    def _assign(self, identity: TechnicianIdentity) -> None:
        self.status = V.ASSIGNED
        self.technician_id = identity.technician_id
        self.technician = identity
        self.assignment += 1  # a new visit code; the old one is void
        self.code_attempts = 0

    def decline(self, offer_id: str, technician_id: str, now: datetime) -> Offer:
        offer = self.answerable(offer_id, technician_id, now)
        self._release(offer, OfferStatus.DECLINED, now)
        return offer

    def expire(self, offer_id: str, now: datetime) -> Offer | None:
        """Silence is a decline once the deadline passed; None if it was answered already."""
        offer = next((o for o in self.offers if o.offer_id == offer_id), None)
        if offer is None or offer.status is not OfferStatus.OPEN or now < offer.deadline:
            return None
        self._release(offer, OfferStatus.EXPIRED, now)
        return offer

    def _release(self, offer: Offer, outcome: OfferStatus, now: datetime) -> None:
        offer.status, offer.answered_at = outcome, now
        self.passed_over.append(offer.technician_id)
        self.status, self.technician_id = V.SEARCHING, None

    def replace(self, reason: str) -> TechnicianIdentity | None:
        """The technician drops out or operations move the visit (or send one nobody could
        be found for back to matching): search again.

        The current technician is remembered as `previous` so the customer is told
        both identities when the next one accepts; their visit code is void at once.
        """
        if self.status not in REPLACEABLE | {V.FAILED}:
            raise Conflict(f"visit {self.visit_id} is {self.status}: too late to replace")
        leaving = self.technician
        if open_offer := self.open_offer:
            open_offer.status = OfferStatus.WITHDRAWN
        if self.technician_id:
            self.passed_over.append(self.technician_id)
        if leaving is not None:
            self.previous = leaving
        self.status, self.technician_id, self.technician = V.SEARCHING, None, None
        self.code_digest, self.failure = None, reason
        return leaving

    def search_from(self, now: datetime, timeout: timedelta) -> None:
        """A search starting again (the technician left, the window moved) has its own
        search time from now, never past the window: not what was left of the first one."""
        self.search_deadline = max(
            self.search_deadline, search_deadline(now, self.window_end, timeout)
        )

    def assign_by_hand(self, tech: Technician) -> TechnicianIdentity | None:
        """Operations choose the technician; returns the one replaced, if any."""
        if self.status not in {V.SEARCHING, V.FAILED} | REPLACEABLE:
            raise Conflict(f"visit {self.visit_id} is {self.status}: it cannot be reassigned")
        if self.technician_id == tech.technician_id and self.status is not V.OFFERED:
            raise Conflict(f"{tech.technician_id} is already assigned to this visit")
        previous = self.technician or self.previous
        if open_offer := self.open_offer:
            open_offer.status = OfferStatus.WITHDRAWN
        self._assign(tech.identity())
        self.previous, self.failure = None, None
        return previous

    def fail(self, reason: str) -> None:
        if self.status is not V.SEARCHING:
            raise Conflict(f"visit {self.visit_id} is {self.status}, not searching")
        self.status, self.failure = V.FAILED, reason

    def cancel(self) -> bool:
        """Stop the visit; False if it is over already (see `void` for a completed one)."""
        if self.status in {V.COMPLETED, V.CANCELLED}:
            return False
        if open_offer := self.open_offer:
            open_offer.status = OfferStatus.WITHDRAWN
        self.status = V.CANCELLED
        self.code_digest = None
        return True

    def void(self, now: datetime) -> bool:
        """The booking was cancelled before the technician completed the visit, but dispatch
        heard of it only afterwards (events travel separately). The customer was told the
        booking is off, so the completion is voided and no receipt is owed. False if the
        visit is not completed, or was voided already."""
        if self.status is not V.COMPLETED or self.voided_at is not None:
            return False
        self.voided_at = now
        return True

    # -- the visit itself, step by step; every step belongs to the assigned technician --
    def _by_assigned(self, technician_id: str, allowed: Iterable[VisitStatus], step: str) -> None:
        if self.technician_id != technician_id or self.status is V.OFFERED:
            raise Forbidden(f"visit {self.visit_id} is not assigned to {technician_id}")
        if self.status is V.HALTED:
            raise Locked(f"visit {self.visit_id} was halted by a safety alert")
        if self.status not in set(allowed):
            raise Conflict(f"cannot {step}: visit {self.visit_id} is {self.status}")

    def set_off(self, technician_id: str) -> None:
        self._by_assigned(technician_id, {V.ASSIGNED}, "set off")
        self.status = V.EN_ROUTE

    def arrive(self, technician_id: str, at: GeoPoint, now: datetime, max_m: float) -> bool:
        """Check in where they are; True when that is too far from the address (flag it)."""
        self._by_assigned(technician_id, {V.ASSIGNED, V.EN_ROUTE}, "check in")
        self.status, self.arrived_at = V.ARRIVED, now
        self.arrival_distance_m = round(at.distance_m(self.location), 1)
        far = self.arrival_distance_m > max_m
        if far:
            self.alerts.append(AlertKind.CHECK_IN_FAR)
        return far

    def enter_code(
        self, technician_id: str, correct: bool, now: datetime, attempts: int
    ) -> CodeResult:
        """The technician types the customer's code. Wrong `attempts` times: locked, alert."""
        self._by_assigned(technician_id, {V.ARRIVED}, "confirm identity")
        if correct:
            self._confirmed(now, "visit code")
            return CodeResult.CONFIRMED
        self.code_attempts += 1
        if self.code_attempts >= attempts:
            self.status, self.code_digest = V.HALTED, None
            self.alerts.append(AlertKind.WRONG_CODE_LOCKOUT)
            return CodeResult.LOCKED
        return CodeResult.WRONG

    def _confirmed(self, now: datetime, method: str) -> None:
        self.status, self.identity_confirmed_at, self.identity_method = (
            V.IDENTITY_CONFIRMED,
            now,
            method,
        )
        self.code_digest = None  # one time only

    def confirm_in_app(self, customer_id: str, now: datetime) -> None:
        """The customer confirms name and badge in the app instead of reading out the code."""
        self._by_customer(customer_id)
        if self.status is not V.ARRIVED:
            raise Conflict(f"the technician has not checked in (visit is {self.status})")
        self._confirmed(now, "customer in app")

    def not_the_person(self, customer_id: str) -> None:
        """The customer says the person at the door is not the one shown: stop at once."""
        self._by_customer(customer_id)
        if self.status not in {
            V.ASSIGNED,
            V.EN_ROUTE,
            V.ARRIVED,
            V.IDENTITY_CONFIRMED,
            V.IN_SERVICE,
        }:
            raise Conflict(f"visit {self.visit_id} is {self.status}: nobody is at the door")
        self.status, self.code_digest = V.HALTED, None
        self.alerts.append(AlertKind.NOT_THE_PERSON)

    def _by_customer(self, customer_id: str) -> None:
        if customer_id != self.customer_id:
            raise Forbidden(f"visit {self.visit_id} belongs to another customer")
        if self.status is V.HALTED:
            raise Locked(f"visit {self.visit_id} was halted by a safety alert")

    def start(self, technician_id: str, now: datetime) -> None:
        if (
            self.status in {V.ASSIGNED, V.EN_ROUTE, V.ARRIVED}
            and self.technician_id == technician_id
        ):
            raise Conflict("no service can start before the customer confirmed the identity")
        self._by_assigned(technician_id, {V.IDENTITY_CONFIRMED}, "start")
        self.status, self.started_at = V.IN_SERVICE, now

    def complete(
        self, technician_id: str, performed: Sequence[tuple[str, int]], now: datetime
    ) -> list[PricedLine]:
        """Record what was done: only booked catalogue items, at the booked prices."""
        self._by_assigned(technician_id, {V.IN_SERVICE}, "complete")
        booked = {line.code: line for line in self.lines}
        done: list[PricedLine] = []
        for index, (code, quantity) in enumerate(performed):
            line = booked.get(code)
            if line is None:
                raise Unprocessable(
                    f"{code!r} is not a catalogue item on this booking; only booked catalogue "
                    "items can be recorded",
                    field=f"performed.{index}.code",
                )
            done.append(line.model_copy(update={"quantity": quantity}))
        if len({line.code for line in done}) != len(done):
            raise Unprocessable("record each item once, with its quantity", field="performed")
        self.status, self.completed_at, self.performed = V.COMPLETED, now, done
        return done


def search_deadline(since: datetime, window_end: datetime, timeout: timedelta) -> datetime:
    """How long a booking may wait for anybody: the search time, never past its window."""
    return min(since + timeout, window_end)


def new_visit_id() -> str:
    return f"vs_{uuid.uuid4().hex}"


# ----------------------------------------------------------------- visit code --
def visit_code(key: bytes, visit_id: str, assignment: int) -> str:
    """The one-time code for this assignment (six digits), derived, never stored."""
    mac = hmac.new(key, f"code:{visit_id}:{assignment}".encode(), hashlib.sha256).digest()
    return f"{int.from_bytes(mac[:8], 'big') % 1_000_000:06d}"


def code_digest(key: bytes, visit_id: str, assignment: int, code: str) -> str:
    """What is stored to check an entered code (a keyed hash, not the code)."""
    message = f"check:{visit_id}:{assignment}:{code}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def code_matches(key: bytes, visit: Visit, entered: str) -> bool:
    if visit.code_digest is None:
        return False
    digest = code_digest(key, visit.visit_id, visit.assignment, entered)
    return hmac.compare_digest(digest, visit.code_digest)
