"""Events published by services/dispatch."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from shared.events.envelope import EventPayload
from shared.events.registry import event
from shared.events.types import PricedLine

STREAM = "dispatch"
# The steps of a visit the customer follows, from a technician's acceptance to its end.
VisitStage = Literal[
    "assigned", "en_route", "arrived", "identity_confirmed", "in_service", "completed"
]


class TechnicianComing(EventPayload):
    """Who comes to the visit, as the customer checks them at the door (not an event
    itself: what technician_assigned and technician_details_changed both say)."""

    booking_id: str
    visit_id: str
    technician_id: str
    technician_name: str
    badge_number: str
    photo_url: str | None = None
    rating: float | None = None
    certificates: list[str] = Field(default_factory=list)
    store_id: str | None = Field(default=None, description="The partner store that sends them")
    phone_masked: str | None = Field(default=None, description="Never the whole number")


@event("dispatch.technician_assigned", version=1, stream=STREAM, key="booking_id")
class TechnicianAssigned(TechnicianComing):
    """A technician will do the visit; carries the identity the customer checks at the door."""


@event("dispatch.technician_reassigned", version=1, stream=STREAM, key="booking_id")
class TechnicianReassigned(EventPayload):
    """The technician changed (dropped out, or operations reassigned): both identities."""

    booking_id: str
    visit_id: str
    previous_technician_id: str
    previous_badge_number: str
    technician_id: str
    technician_name: str
    badge_number: str
    photo_url: str | None = None
    rating: float | None = None
    certificates: list[str] = Field(default_factory=list)
    store_id: str | None = Field(default=None, description="The partner store that sends them")
    phone_masked: str | None = Field(default=None, description="Never the whole number")
    reason: str


@event("dispatch.technician_details_changed", version=1, stream=STREAM, key="booking_id")
class TechnicianDetailsChanged(TechnicianComing):
    """The same technician still comes, but what the customer checks at the door changed
    (a new work card, name or photo; certificates, store, phone): their file was written
    again. The customer is told at once; nothing else about the visit moves."""

    previous_badge_number: str = Field(description="The badge the customer was told before")


@event("dispatch.technician_released", version=1, stream=STREAM, key="booking_id")
class TechnicianReleased(EventPayload):
    """The technician no longer comes (they dropped out, operations moved the visit, or the
    new window does not suit them) and the search starts again. From now on they see neither
    the customer's home nor their care profile, and the customer is told not to open to
    them. `dispatch.technician_reassigned` follows when someone else accepts."""

    booking_id: str
    visit_id: str
    technician_id: str
    badge_number: str
    reason: str = Field(description="Operations' and the technician's words: not the customer's")


@event("dispatch.failed", version=1, stream=STREAM, key="booking_id")
class DispatchFailed(EventPayload):
    """No qualified technician could be found; operations must step in."""

    booking_id: str
    reason: str


@event("dispatch.search_resumed", version=1, stream=STREAM, key="booking_id")
class SearchResumed(EventPayload):
    """Operations sent a visit nobody could be found for back to matching, with a search
    time of its own. `dispatch.technician_assigned` follows when someone accepts, and
    `dispatch.failed` again if nobody does."""

    booking_id: str
    visit_id: str
    reason: str = Field(description="Operations' words")


@event("dispatch.technician_en_route", version=1, stream=STREAM, key="booking_id")
class TechnicianEnRoute(EventPayload):
    """The technician set off to the address."""

    booking_id: str
    visit_id: str
    technician_id: str
    at: datetime


@event("dispatch.technician_arrived", version=1, stream=STREAM, key="booking_id")
class TechnicianArrived(EventPayload):
    """The technician checked in at the address."""

    booking_id: str
    visit_id: str
    technician_id: str
    at: datetime
    distance_m: float = Field(ge=0, description="Reported location to the address")
    flagged: bool = Field(default=False, description="Too far from the address: ops look")


@event("dispatch.identity_confirmed", version=1, stream=STREAM, key="booking_id")
class IdentityConfirmed(EventPayload):
    """The customer confirmed at the door that the name and badge number match."""

    booking_id: str
    visit_id: str
    technician_id: str
    at: datetime


@event("dispatch.service_started", version=1, stream=STREAM, key="booking_id")
class ServiceStarted(EventPayload):
    """The service began (only ever after the identity was confirmed)."""

    booking_id: str
    visit_id: str
    technician_id: str
    at: datetime


@event("dispatch.service_completed", version=1, stream=STREAM, key="booking_id")
class ServiceCompletedV1(EventPayload):
    """The technician finished the visit, before the region was told. Still read, for events
    published before version 2."""

    booking_id: str
    visit_id: str
    customer_id: str
    technician_id: str
    store_id: str = Field(description="The technician's store: the receipt joins its chain")
    completed_at: datetime
    lines: list[PricedLine] = Field(min_length=1)


@event("dispatch.service_completed", version=2, stream=STREAM, key="booking_id")
class ServiceCompleted(ServiceCompletedV1):
    """The technician finished the visit; `lines` are the items performed at booked prices."""

    region: str = Field(
        min_length=1, description="Where the visit was: operations see what each region makes"
    )


@event("dispatch.service_voided", version=1, stream=STREAM, key="booking_id")
class ServiceVoided(EventPayload):
    """The booking was cancelled, but the cancellation reached dispatch only after the visit
    was completed: the customer's cancellation stands and no receipt is owed for the visit."""

    booking_id: str
    visit_id: str
    customer_id: str
    technician_id: str
    completed_at: datetime
    cancelled_at: datetime = Field(description="When the customer's cancellation was accepted")
    reason: str


@event("dispatch.reschedule_refused", version=1, stream=STREAM, key="booking_id")
class RescheduleRefused(EventPayload):
    """A new window reached dispatch too late: the technician had set off already, or the
    visit was under way, done or stopped by a safety alert. The visit keeps its window and
    its prices (`lines`), and booking puts the booking back on them, at `stage`, the last
    step the visit reached."""

    booking_id: str
    visit_id: str
    customer_id: str
    window_start: datetime
    window_end: datetime
    lines: list[PricedLine] = Field(min_length=1)
    stage: VisitStage
    halted_by: str | None = Field(
        default=None, description="The safety alert that stopped the visit, if one did"
    )
    reason: str


@event("dispatch.offer_made", version=1, stream=STREAM, key="booking_id")
class OfferMade(EventPayload):
    """A technician is offered a visit; their time is held until they answer or the deadline."""

    booking_id: str
    visit_id: str
    offer_id: str
    technician_id: str
    window_start: datetime
    window_end: datetime
    deadline: datetime


@event("dispatch.offer_declined", version=1, stream=STREAM, key="booking_id")
class OfferDeclined(EventPayload):
    """The technician said no; the next candidate is tried."""

    booking_id: str
    offer_id: str
    technician_id: str


@event("dispatch.offer_expired", version=1, stream=STREAM, key="booking_id")
class OfferExpired(EventPayload):
    """No answer before the deadline counts as a decline; the next candidate is tried."""

    booking_id: str
    offer_id: str
    technician_id: str


@event("dispatch.safety_alert", version=1, stream=STREAM, key="booking_id")
class SafetyAlertV1(EventPayload):
    """Operations must look now: wrong visit codes, "not the person", or a far check-in.
    Still read, for events published before version 2."""

    booking_id: str
    visit_id: str
    customer_id: str
    technician_id: str | None
    kind: str = Field(pattern=r"^(wrong_code_lockout|not_the_person|check_in_far_from_address)$")
    severity: str = Field(pattern=r"^(critical|warning)$")
    detail: str
    at: datetime
    alert_id: str | None = Field(default=None, description="Acknowledged by this id")
    store_id: str | None = Field(default=None, description="The technician's store")


TECHNICIAN_LATE = "technician_late"  # a safety alert's kind (version 2 on)


@event("dispatch.safety_alert", version=2, stream=STREAM, key="booking_id")
class SafetyAlert(SafetyAlertV1):
    """Operations must look now: wrong visit codes, "not the person", a far check-in, or a
    technician late (not checked in when the visit should have begun: a warning; the
    customer is told, and may cancel free)."""

    kind: str = Field(
        pattern=r"^(wrong_code_lockout|not_the_person|check_in_far_from_address|technician_late)$"
    )


@event("dispatch.safety_alert_acknowledged", version=1, stream=STREAM, key="booking_id")
class SafetyAlertAcknowledged(EventPayload):
    """Someone in operations has taken the alert: who, when, and what they are doing."""

    alert_id: str
    booking_id: str
    store_id: str | None = None
    acknowledged_by: str
    acknowledged_at: datetime
    note: str


@event("dispatch.technician_status_changed", version=1, stream=STREAM, key="technician_id")
class TechnicianStatusChangedV1(EventPayload):
    """A technician was suspended or reinstated, before a complaint's remedies were named.
    Still read, for events published before version 2."""

    technician_id: str
    status: str = Field(pattern=r"^(active|suspended)$")
    reason: str
    complaint_id: str | None = None


@event("dispatch.technician_status_changed", version=2, stream=STREAM, key="technician_id")
class TechnicianStatusChanged(TechnicianStatusChangedV1):
    """A technician was suspended (no more offers) or reinstated; for a complaint's
    suspension, the complaint and the remedy it carries out."""

    remedy_id: str | None = Field(default=None, min_length=1, max_length=64)
