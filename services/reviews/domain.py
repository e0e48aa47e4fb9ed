"""Reviews and complaints, free of I/O.

The rule of this service: no complaint is ever lost or left without an owner.
A complaint always has a tier (agent, supervisor, manager) that owns it, and
while it is open, a deadline that escalates it when missed.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import Field, model_validator

from shared.errors import Conflict, Forbidden, NotFound, Unprocessable
from shared.events.reviews import TakenOffReceipt
from shared.events.types import Amount, Currency, money
from shared.schema import Forbid

REVIEW_EDIT_WINDOW = timedelta(hours=24)  # a review may be corrected for a day
QUIET_PERIOD = timedelta(days=7)  # a proposed resolution nobody answers closes after this

# Technician quality: a Bayesian average pulls a few reviews towards the platform's prior,
# so one early 1-star (or 5-star) does not decide a technician's ranking.
PRIOR_MEAN = 4.0
PRIOR_WEIGHT = 5  # the prior counts as this many reviews


class ReviewRequestStatus(StrEnum):
    OPEN = "open"  # the customer may rate the visit
    REVIEWED = "reviewed"
    WITHDRAWN = "withdrawn"  # the visit was voided: there is nothing to rate


class ReviewRequest(Forbid):
    """An invitation to rate a completed visit; one per booking."""

    booking_id: str
    customer_id: str
    technician_id: str
    status: ReviewRequestStatus = ReviewRequestStatus.OPEN
    opened_at: datetime
    version: int = 0


class Review(Forbid):
    booking_id: str
    customer_id: str
    technician_id: str
    store_id: str | None = None
    rating: int = Field(ge=1, le=5)
    tags: list[str] = Field(default_factory=list, max_length=10)
    text: str = Field(default="", max_length=2000)
    created_at: datetime
    updated_at: datetime
    withdrawn_at: datetime | None = Field(
        default=None,
        description="The visit was voided (the customer's cancellation crossed its completion): "
        "the review no longer counts towards the technician",
    )
    version: int = 0

    def edit(self, customer_id: str, at: datetime, **changes: object) -> None:
        if customer_id != self.customer_id:
            raise Forbidden("only the customer who wrote a review may change it")
        if self.withdrawn_at is not None:
            raise Conflict(
                "the booking was cancelled before its visit was completed: its review is withdrawn"
            )
        if at - self.created_at > REVIEW_EDIT_WINDOW:
            raise Conflict("a review can be changed only within a day of writing it")
        for name, value in changes.items():
            setattr(self, name, value)
        self.updated_at = at

    def withdraw(self, at: datetime) -> bool:
        """Whether this withdrew it (a second voiding changes nothing)."""
        if self.withdrawn_at is not None:
            return False
        self.withdrawn_at = self.updated_at = at
        return True


def bayesian_rating(ratings: list[int]) -> float:
    return round((PRIOR_MEAN * PRIOR_WEIGHT + sum(ratings)) / (PRIOR_WEIGHT + len(ratings)), 3)


# ------------------------------------------------------------------ complaints --


class Category(StrEnum):
    SAFETY = "safety"
    OVERCHARGE = "overcharge"
    CONDUCT = "conduct"
    QUALITY = "quality"
    LATE_OR_MISSED = "late_or_missed"
    PRIVACY = "privacy"
    OTHER = "other"


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class Tier(StrEnum):
    AGENT = "agent"
    SUPERVISOR = "supervisor"
    MANAGER = "manager"

    def above(self) -> Tier:
        order = list(Tier)
        return order[min(order.index(self) + 1, len(order) - 1)]


class Channel(StrEnum):
    APP = "app"
    PHONE = "phone"  # operations open it on the customer's behalf
    SAFETY_ALERT = "safety_alert"  # opened by the platform itself


class Sla(Forbid):
    first_response: timedelta
    resolution: timedelta


# First response and resolution by severity; safety and privacy are held to the tightest.
_BY_SEVERITY = {
    Severity.CRITICAL: Sla(first_response=timedelta(minutes=30), resolution=timedelta(hours=8)),
    Severity.HIGH: Sla(first_response=timedelta(hours=2), resolution=timedelta(hours=24)),
    Severity.MEDIUM: Sla(first_response=timedelta(hours=8), resolution=timedelta(days=3)),
    Severity.LOW: Sla(first_response=timedelta(hours=24), resolution=timedelta(days=7)),
}
_SAFETY = {
    Severity.CRITICAL: Sla(first_response=timedelta(minutes=15), resolution=timedelta(hours=4)),
    Severity.HIGH: Sla(first_response=timedelta(minutes=30), resolution=timedelta(hours=8)),
}


def sla(category: Category, severity: Severity) -> Sla:
    """The deadlines for a complaint: safety tightest, then privacy, then the rest."""
    if category is Category.SAFETY:
        return _SAFETY.get(severity, _SAFETY[Severity.HIGH])
    if category is Category.PRIVACY and severity in (Severity.LOW, Severity.MEDIUM):
        return _BY_SEVERITY[Severity.HIGH]
    return _BY_SEVERITY[severity]


class ComplaintStatus(StrEnum):
    OPEN = "open"  # waiting for the first response
    IN_PROGRESS = "in_progress"  # answered, being worked on
    RESOLUTION_PROPOSED = "resolution_proposed"  # waiting for the customer's answer
    CLOSED = "closed"


class RemedyKind(StrEnum):
    APOLOGY = "apology"
    REDO_VISIT = "redo_visit"  # booking makes a priority booking
    REFUND = "refund"  # payments refunds (amount, or everything paid)
    COUPON = "coupon"  # payments grants a coupon
    COACHING = "coaching"
    SUSPENSION = "suspension"  # dispatch stops offering the technician work

    @property
    def acted_on_elsewhere(self) -> bool:
        return self in (
            RemedyKind.REDO_VISIT,
            RemedyKind.REFUND,
            RemedyKind.COUPON,
            RemedyKind.SUSPENSION,
        )


class RemedyIn(Forbid):
    kind: RemedyKind
    amount: Amount | None = Field(default=None, description="Refund or coupon amount")
    percent: int | None = Field(default=None, ge=1, le=100, description="Coupon percent")
    currency: Currency | None = None
    note: str = Field(default="", max_length=500)


# How reviews says a refund is not made but owed (handlers.py): cash to hand back, or a card
# that would not take it back. Remedies stored before `owed` was are read by these words.
CASH_TO_HAND_BACK = "of the refund is cash to hand back"
CARD_REFUSED = "the card would not take"
OWED_WORDS = (CASH_TO_HAND_BACK, CARD_REFUSED)


class Remedy(RemedyIn):
    remedy_id: str
    decided_at: datetime
    # The Idempotency-Key its resolution was proposed under (operations' own): a proposal
    # retried after the customer already rejected it is not a second set of remedies.
    proposal: str | None = None
    # And a digest of the text it was proposed with: the same key with other words is a 409.
    proposal_digest: str | None = None
    took_effect_at: datetime | None = None
    not_made: str | None = None  # why the service that carries it out could not
    # Not made, and the money is owed all the same: operations hand it back (cash, a card
    # that refused it) and record it, and then it is made.
    owed: bool = False
    # A later resolution answered it instead: payments drops it, never to be made (a refund
    # told not made is kept in case the visit is paid after all).
    withdrawn_at: datetime | None = None
    # Made after all (the customer has both): operations dealt with it, in their words.
    dealt_with_at: datetime | None = None
    dealt_with: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _owed_before_it_was_kept(cls, data: Any) -> Any:
        """Remedies stored before `owed` was: payments' words say whether money is owed."""
        if isinstance(data, dict) and "owed" not in data and data.get("not_made"):
            data = {**data, "owed": any(w in data["not_made"] for w in OWED_WORDS)}
        return data

    @property
    def pending(self) -> bool:
        return self.took_effect_at is None and self.not_made is None

    @property
    def made_after_withdrawn(self) -> bool:
        """Answered by a later resolution, and made (or owed) all the same."""
        return self.withdrawn_at is not None and (self.took_effect_at is not None or self.owed)

    @property
    def replaceable(self) -> bool:
        """Not made, and nothing owed: another remedy answers it."""
        return self.not_made is not None and not self.owed and self.withdrawn_at is None


class Breach(Forbid):
    deadline: str  # first_response, resolution
    tier: Tier
    at: datetime


DEALT_WITH = "remedy made twice: dealt with"
INTERNAL_STEPS = frozenset(
    {"note", DEALT_WITH}
)  # operations' own: never shown to customers or stores


class Step(Forbid):
    at: datetime
    by: str
    what: str
    detail: str = ""


PROPOSED = "resolution proposed"
TAKEN_OFF = "taken off the receipt"
IN_PLACE = "in place of the last"


class Complaint(Forbid):
    complaint_id: str
    booking_id: str
    customer_id: str
    technician_id: str | None = None
    store_id: str | None = None
    category: Category
    severity: Severity
    description: str
    channel: Channel
    status: ComplaintStatus = ComplaintStatus.OPEN
    tier: Tier = Tier.AGENT
    owner: str | None = None  # a staff member; None: the tier's queue owns it
    opened_at: datetime
    first_response_due: datetime
    resolution_due: datetime
    first_response_at: datetime | None = None
    resolution: str | None = None
    resolution_proposed_at: datetime | None = None
    # Names the resolution waiting for the customer: an answer that names another (operations
    # proposed again meanwhile) is refused, not taken as an answer to one never read.
    resolution_id: str | None = None
    quiet_until: datetime | None = None
    closed_at: datetime | None = None
    closed_by: str | None = None
    remedies: list[Remedy] = Field(default_factory=list)
    # The Idempotency-Keys the customer rejected under: a rejection retried after operations
    # proposed again must not turn down the new resolution too.
    rejected_under: list[str] = Field(default_factory=list)
    breaches: list[Breach] = Field(default_factory=list)
    # What the customer took off the visit's receipt before signing: never charged, so a
    # remedy that refunds it again would compensate twice. Operations read it before they
    # propose one.
    taken_off_receipt: list[TakenOffReceipt] = Field(
        default_factory=list,
        description="What the customer took off the visit's receipt before signing: never "
        "charged, so not to be refunded again",
    )
    timeline: list[Step] = Field(default_factory=list)
    version: int = 0

    @property
    def in_place_of_another(self) -> bool:
        """The last resolution took the place of another (its step says so, as it did before
        this was asked): an answer must name the one it read, as an older app that names
        none could have read the one replaced."""
        proposed = [s.what for s in self.timeline if s.what.startswith(PROPOSED)]
        return bool(proposed) and IN_PLACE in proposed[-1]

    @property
    def next_deadline(self) -> tuple[str, datetime] | None:
        """The deadline that escalates this complaint next, if it is still open."""
        if self.status is ComplaintStatus.CLOSED:
            return None
        if self.status is ComplaintStatus.RESOLUTION_PROPOSED:
            return None  # the customer's turn; the quiet period runs instead
        if self.first_response_at is None:
            return "first_response", self.first_response_due
        return "resolution", self.resolution_due

    def current(self, remedy: Remedy) -> bool:
        """Decided by the resolution proposed last."""
        return remedy.decided_at == self.resolution_proposed_at

    @property
    def unmade(self) -> list[Remedy]:
        """The last resolution's remedies that could not be made. One an earlier resolution
        left unmade was answered by the next one (else no complaint with such a remedy would
        ever close quietly)."""
        return [r for r in self.remedies if r.not_made is not None and self.current(r)]

    @property
    def withdrawn_by_last(self) -> list[Remedy]:
        """The remedies the resolution proposed last answered instead."""
        at = self.resolution_proposed_at
        return [r for r in self.remedies if at is not None and r.withdrawn_at == at]

    def _log(self, at: datetime, by: str, what: str, detail: str = "") -> None:
        self.timeline.append(Step(at=at, by=by, what=what, detail=detail))

    def as_seen_by_outsider(self, *, store: bool) -> Complaint:
        """What the customer or the technician's store may read: not operations' internal
        notes, nor which staff member did what (their id is their e-mail): "operations";
        and a store not who complained (the customer's id, in the complaint and in who took
        its steps)."""

        def who(by: str) -> str:
            if by.startswith("ops:"):
                return "operations"
            if store and by.startswith("customer:"):
                return "customer"
            return by

        timeline = [
            s.model_copy(
                update={"by": who(s.by), "detail": "" if s.what == "assigned" else s.detail}
            )
            for s in self.timeline
            if s.what not in INTERNAL_STEPS
        ]
        update: dict[str, object] = {
            "timeline": timeline,
            "remedies": [
                r.model_copy(update={"proposal": None, "proposal_digest": None, "dealt_with": None})
                for r in self.remedies
            ],
            "owner": None,
            "rejected_under": [],
            "closed_by": who(self.closed_by) if self.closed_by is not None else None,
        }
        if store:
            update["customer_id"] = ""
        return self.model_copy(update=update)

    def _open(self) -> None:
        if self.status is ComplaintStatus.CLOSED:
            raise Conflict(f"complaint {self.complaint_id} is closed")

    def respond(self, by: str, text: str, at: datetime) -> None:
        self._open()
        if self.first_response_at is None:
            self.first_response_at = at
            if self.status is ComplaintStatus.OPEN:
                self.status = ComplaintStatus.IN_PROGRESS
        self._log(at, by, "responded", text)

    def assign(self, by: str, owner: str, at: datetime) -> None:
        self._open()
        self.owner = owner
        self._log(at, by, "assigned", owner)

    def note(self, by: str, text: str, at: datetime) -> None:
        self._log(at, by, "note", text)

    def receipt_disputed(self, taken: TakenOffReceipt, by: str) -> bool:
        """The customer took items off the visit's receipt, before complaining or after (a
        step of the timeline then; whatever the complaint's status). False if known already."""
        if any(t.revision == taken.revision for t in self.taken_off_receipt):
            return False
        self.taken_off_receipt = sorted([*self.taken_off_receipt, taken], key=lambda t: t.revision)
        if taken.at >= self.opened_at:
            items = ", ".join(
                f"{i.quantity} x {i.name} ({i.reason.replace('_', ' ')})" for i in taken.items
            )
            what = f"{items}: {money(taken.amount, taken.currency)} not charged"
            self._log(taken.at, by, TAKEN_OFF, what)
        return True

    def deal_with_twice(self, by: str, remedy_id: str, how: str, at: datetime) -> bool:
        """Operations dealt with a remedy made after another resolution answered it (the
        customer has both): it leaves their board. Closed or not: most are closed by then.
        The same words again are a retry (False: nothing changes); other words, a 409."""
        remedy = next((r for r in self.remedies if r.remedy_id == remedy_id), None)
        if remedy is None:
            raise NotFound(f"complaint {self.complaint_id} has no remedy {remedy_id}")
        if remedy.dealt_with_at is not None:
            if remedy.dealt_with == how:
                return False
            raise Conflict(
                f"remedy {remedy_id} was dealt with already at {remedy.dealt_with_at.isoformat()}:"
                f" {remedy.dealt_with}"
            )
        if not remedy.made_after_withdrawn:
            raise Conflict(
                f"remedy {remedy_id} was not made after another resolution answered it: "
                "nothing to deal with"
            )
        remedy.dealt_with_at, remedy.dealt_with = at, how
        self._log(at, by, DEALT_WITH, f"{remedy.kind.value} {remedy_id}: {how}")
        return True

    def propose(
        self, by: str, text: str, remedies: list[RemedyIn], at: datetime, key: str | None = None
    ) -> list[Remedy]:
        """Operations propose how to put it right; the remedies are decided now (be generous:
        a refund or a redo goes out at once, it does not wait for the customer's answer).
        One waits for the customer's answer at a time, unless a remedy of it could not be
        made: the new one takes its place (the customer answers that one).
        A proposal retried under its `key` decides nothing again: none are returned."""
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        if key is not None and self._proposed_under(key, digest, remedies):
            return []
        self._open()
        replacing = self.status is ComplaintStatus.RESOLUTION_PROPOSED
        if replacing and not any(r.replaceable for r in self.unmade):
            # One at a time, so a retried proposal (the first landed after a timeout) is not
            # a second one with remedies of its own: the customer answers this one first.
            owed = " (its refund is owed: record it repaid)" if self.unmade else ""
            raise Conflict(f"a resolution is already waiting for the customer's answer{owed}")
        if replacing and key is None:
            # Else a retry, its first try landed, would replace the new one in turn.
            raise Unprocessable(
                "a resolution in place of one waiting for the customer needs an Idempotency-Key",
                field="Idempotency-Key",
            )
        if not remedies:
            raise Unprocessable("a resolution names at least one remedy", field="remedies")
        if self.first_response_at is None:
            self.respond(by, text, at)
        for answered in self.remedies:  # this resolution answers them: never made later
            if answered.replaceable:
                answered.withdrawn_at = at
        decided = [
            Remedy(
                **r.model_dump(),
                remedy_id=f"rm_{uuid.uuid4().hex[:12]}",
                decided_at=at,
                proposal=key,
                proposal_digest=digest if key is not None else None,
            )
            for r in remedies
        ]
        for remedy in decided:
            if not remedy.kind.acted_on_elsewhere:
                remedy.took_effect_at = at  # an apology or coaching is done by saying it
        self.remedies += decided
        self.resolution = text
        self.resolution_proposed_at = at
        self.resolution_id = f"rs_{uuid.uuid4().hex[:12]}"
        self.quiet_until = at + QUIET_PERIOD
        self.status = ComplaintStatus.RESOLUTION_PROPOSED
        what = PROPOSED + (f" {IN_PLACE} (a remedy not made)" * replacing)
        self._log(at, by, what, ", ".join(r.kind.value for r in decided))
        return decided

    def _proposed_under(self, key: str, digest: str, remedies: list[RemedyIn]) -> bool:
        """Was a resolution proposed under this key already (the same one, or it is a 409)?"""
        earlier = [r for r in self.remedies if r.proposal == key]
        if not earlier:
            return False
        fields = set(RemedyIn.model_fields)
        same_words = all(r.proposal_digest in (None, digest) for r in earlier)  # None: before
        same_remedies = [r.model_dump(include=fields) for r in earlier] == [
            r.model_dump() for r in remedies
        ]
        if not (same_words and same_remedies):
            raise Conflict(
                "this Idempotency-Key was already used for a different resolution",
                field="Idempotency-Key",
            )
        return True

    def _answers(self, resolution_id: str | None) -> None:
        """An answer naming the resolution it read answers that one only."""
        if resolution_id is not None and resolution_id != self.resolution_id:
            raise Conflict(
                "operations proposed another resolution since this one was read: read it "
                "and answer that one",
                field="resolution_id",
            )
        if resolution_id is None and self.in_place_of_another:
            raise Conflict(
                "this resolution took the place of another: read it and answer naming its "
                "resolution_id (an app too old to: update it, or call us to answer)",
                field="resolution_id",
            )

    def accept(self, by: str, at: datetime, resolution_id: str | None = None) -> None:
        if self.status is not ComplaintStatus.RESOLUTION_PROPOSED:
            raise Conflict("there is no proposed resolution to accept")
        self._answers(resolution_id)
        self._close(by, at, "accepted by the customer")

    def reject(
        self,
        by: str,
        reason: str,
        at: datetime,
        policy: Sla,
        key: str | None = None,
        *,
        resolution_id: str | None = None,
    ) -> bool:
        """The customer is not satisfied: the complaint goes up a tier with fresh deadlines.
        A rejection retried under its `key` changes nothing (False), whatever came since."""
        if key is not None and key in self.rejected_under:
            return False
        if self.status is not ComplaintStatus.RESOLUTION_PROPOSED:
            raise Conflict("there is no proposed resolution to reject")
        self._answers(resolution_id)
        if key is not None:
            self.rejected_under.append(key)
        self.status = ComplaintStatus.IN_PROGRESS
        self.quiet_until = None
        self.tier, self.owner = self.tier.above(), None
        self.resolution_due = at + policy.resolution
        self._log(at, by, "rejected; reopened", f"{reason} (now {self.tier.value})")
        return True

    def close_quietly(self, at: datetime) -> bool:
        """The customer did not answer within the quiet period: closed, unless one of its
        remedies was not made (a refund with nothing paid, a card that would not take it,
        cash not handed back yet). Closing would bury that: it goes back to operations with
        its resolution due now, so it escalates. True when it changed."""
        if (
            self.status is not ComplaintStatus.RESOLUTION_PROPOSED
            or self.quiet_until is None
            or at < self.quiet_until
        ):
            return False
        unmade = [r.kind.value for r in self.unmade]
        if unmade:
            self.status, self.quiet_until, self.resolution_due = (
                ComplaintStatus.IN_PROGRESS,
                None,
                at,
            )
            self._log(at, "platform", "reopened", f"not made: {', '.join(unmade)}")
            return True
        self._close("platform", at, "no answer within the quiet period")
        return True

    def _close(self, by: str, at: datetime, why: str) -> None:
        self.status, self.closed_at, self.closed_by = ComplaintStatus.CLOSED, at, by
        self.owner = None
        self._log(at, by, "closed", why)

    def escalate_if_due(self, at: datetime, policy: Sla) -> Breach | None:
        """A missed deadline: record the breach, move up a tier, re-arm the clock there."""
        due = self.next_deadline
        if due is None or at < due[1]:
            return None
        kind, _ = due
        breach = Breach(deadline=kind, tier=self.tier, at=at)
        self.breaches.append(breach)
        if kind == "first_response":
            self.first_response_due = at + policy.first_response
        else:
            self.resolution_due = at + policy.resolution
        if self.tier.above() is self.tier:
            # Nowhere higher to go: the breach counts on the board, and whoever at the top
            # took it on keeps it (the customer was told it went up already).
            self._log(at, "platform", f"{kind} deadline missed at the top tier", self.tier.value)
            return breach
        self.tier, self.owner = self.tier.above(), None
        self._log(at, "platform", f"{kind} deadline missed; escalated", self.tier.value)
        return breach

    def _pending(self, kind: RemedyKind, remedy_id: str | None) -> Remedy | None:
        """The remedy named (else the first of its kind still pending)."""
        for remedy in self.remedies:
            named = remedy_id is None or remedy.remedy_id == remedy_id
            if remedy.kind is kind and remedy.pending and named:
                return remedy
        return None

    def took_effect(self, kind: RemedyKind, at: datetime, remedy_id: str | None = None) -> bool:
        """The remedy was carried out: one named wins over an earlier "not made" (a booking
        thought cancelled unpaid whose visit was done and paid after all)."""
        remedy = self._pending(kind, remedy_id) or next(
            (
                r
                for r in self.remedies
                if r.kind is kind and r.remedy_id == remedy_id and r.took_effect_at is None
            ),
            None,
        )
        if remedy is None:
            return False
        remedy.took_effect_at, remedy.not_made, remedy.owed = at, None, False
        self._log(
            at, "platform", f"{kind.value} took effect{_AFTER_ALL * bool(remedy.withdrawn_at)}"
        )
        return True

    def not_carried_out(
        self,
        kind: RemedyKind,
        at: datetime,
        remedy_id: str | None,
        why: str,
        *,
        undone: bool = False,
        owed: bool = False,
    ) -> bool:
        """The service that carries the remedy out could not (a refund with nothing paid):
        shown on the complaint, for operations to put it right another way. `undone`: it
        was said made and was not after all (the card would not take the refund back), and
        so, like `owed` (cash to hand back), the money is owed: operations give it back."""
        if not undone:
            # Pending; or, named, one told not made before that is owed now (written off,
            # then taken back and paid in cash: the money is to hand back after all).
            remedy = self._pending(kind, remedy_id) or next(
                (
                    r
                    for r in self.remedies
                    if r.kind is kind
                    and r.remedy_id == remedy_id
                    and r.took_effect_at is None
                    and owed
                    and not r.owed
                ),
                None,
            )
        else:  # the one made (a version 1 id names none: not another still pending)
            remedy = next(
                (
                    r
                    for r in self.remedies
                    if r.kind is kind
                    and r.took_effect_at is not None
                    and remedy_id in (None, r.remedy_id)
                ),
                None,
            )
        if remedy is None:
            return False
        remedy.took_effect_at, remedy.not_made, remedy.owed = None, why, owed or undone
        # On a complaint closed already it stays closed (the customer accepted): the money
        # still owed is on operations' board, from payments, until they give it back.
        after_all = _AFTER_ALL * bool(remedy.withdrawn_at and remedy.owed)
        self._log(at, "platform", f"{kind.value} not made{after_all}", why)
        return True


# A remedy a later resolution answered, made all the same (payments made the refund before
# the withdrawal reached it): the customer has both, which operations must see.
_AFTER_ALL = " after another resolution answered it"


def keyed_complaint_id(customer_id: str, idempotency_key: str) -> str:
    """The complaint a customer's retried filing names: the same key, the same id."""
    digest = hashlib.sha256(f"{customer_id}\x00{idempotency_key}".encode()).hexdigest()
    return f"cmp_{digest[:16]}"


def open_complaint(
    *,
    booking_id: str,
    customer_id: str,
    technician_id: str | None,
    store_id: str | None,
    category: Category,
    severity: Severity,
    description: str,
    channel: Channel,
    by: str,
    at: datetime,
    complaint_id: str | None = None,
) -> Complaint:
    policy = sla(category, severity)
    complaint = Complaint(
        complaint_id=complaint_id or f"cmp_{uuid.uuid4().hex[:16]}",
        booking_id=booking_id,
        customer_id=customer_id,
        technician_id=technician_id,
        store_id=store_id,
        category=category,
        severity=severity,
        description=description,
        channel=channel,
        opened_at=at,
        first_response_due=at + policy.first_response,
        resolution_due=at + policy.resolution,
    )
    complaint.timeline.append(
        Step(at=at, by=by, what="opened", detail=f"{category.value}, {severity.value}")
    )
    return complaint


# ------------------------------------------------------------------------ KPIs --


class Kpis(Forbid):
    """Complaint handling and ratings over a period: what the dashboard reads."""

    period_from: datetime
    period_to: datetime
    complaints: int
    first_response_minutes_median: float | None
    resolution_hours_median: float | None
    breach_rate: float | None = Field(description="Share of complaints that missed a deadline")
    by_category: dict[str, int]
    per_technician: dict[str, int]
    per_store: dict[str, int]
    reviews: int
    average_rating: float | None
    rating_distribution: dict[str, int]


@dataclass(frozen=True)
class ComplaintFigures:
    """A period's complaints, counted where they are stored (no complaint is loaded)."""

    complaints: int = 0
    breached: int = 0  # missed at least one deadline
    by_category: dict[str, int] = field(default_factory=dict)
    per_technician: dict[str | None, int] = field(default_factory=dict)
    per_store: dict[str | None, int] = field(default_factory=dict)
    first_response_minutes_median: float | None = None
    resolution_hours_median: float | None = None


def kpis(
    figures: ComplaintFigures,
    ratings: dict[int, int],
    period_from: datetime,
    period_to: datetime,
) -> Kpis:
    """`ratings`: how many reviews gave each number of stars."""

    def named(counts: dict[str | None, int]) -> dict[str, int]:
        merged: dict[str, int] = {}
        for key, n in counts.items():
            merged[key or "unknown"] = merged.get(key or "unknown", 0) + n
        return merged

    reviews = sum(ratings.values())
    stars = sum(stars * n for stars, n in ratings.items())
    return Kpis(
        period_from=period_from,
        period_to=period_to,
        complaints=figures.complaints,
        first_response_minutes_median=figures.first_response_minutes_median,
        resolution_hours_median=figures.resolution_hours_median,
        breach_rate=figures.breached / figures.complaints if figures.complaints else None,
        by_category=dict(figures.by_category),
        per_technician=named(figures.per_technician),
        per_store=named(figures.per_store),
        reviews=reviews,
        average_rating=round(stars / reviews, 3) if reviews else None,
        rating_distribution={str(n): ratings.get(n, 0) for n in range(1, 6)},
    )
