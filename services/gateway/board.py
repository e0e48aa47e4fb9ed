"""The operations board's read model: everyone's events folded into three collections the
live dashboard reads and watches.

board_bookings    one row per booking: state, waiting time, technician and store, the visit's
                  stage and check-in distance, receipt and rating (today's figures come from it)
board_alerts      safety alerts, with who acknowledged them
board_complaints  complaints: status, tier, the next deadline and the breaches so far
board_fees        late-cancellation fees: owed (to chase or waive), or settled and how
board_unpaid      signed visits whose money is still due (a declined card, cash not yet
                  recorded), the reminders sent, and when they were paid

Events about one booking come on several topics, in no fixed order between them, so each
handler sets only the fields its event owns; a status or complaint update older than the
one stored changes nothing. Every write bumps `rev`, so a client keeps the newer copy.
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure

from services.gateway.domain import (
    AlertRow,
    BookingRow,
    ComplaintRow,
    DayTally,
    FeeRow,
    RefundOwed,
    UnpaidRow,
)
from shared.auth import Actor
from shared.consumer import Handlers
from shared.errors import Unprocessable
from shared.events.booking import (
    BookingAwaitingOperations,
    BookingRequested,
    BookingRequestedV1,
    BookingRescheduled,
    BookingStatusChanged,
    store_of,
)
from shared.events.dispatch import (
    RescheduleRefused,
    SafetyAlert,
    SafetyAlertAcknowledged,
    SafetyAlertV1,
    ServiceCompleted,
    ServiceCompletedV1,
    TechnicianArrived,
    TechnicianAssigned,
    TechnicianDetailsChanged,
    TechnicianReassigned,
    TechnicianReleased,
)
from shared.events.payments import (
    REPAID,
    CancellationFeeEvent,
    CancellationFeeOwed,
    CancellationFeePaid,
    CancellationFeeRefunded,
    CancellationFeeWaived,
    CashDue,
    PaymentFailed,
    PaymentOverdue,
    PaymentSettled,
    PaymentWrittenOff,
    ProviderAnswered,
    ProviderNotAnswering,
    ReceiptSigned,
    RefundDeclined,
    RefundIssued,
    RefundRepaid,
    WriteOffReversed,
)
from shared.events.reviews import (
    ComplaintUpdated,
    ComplaintUpdatedV1,
    ComplaintUpdatedV2,
    ComplaintUpdatedV3,
    ReviewSubmitted,
)
from shared.events.types import money
from shared.mongo import Database, Document
from shared.outbox import Transaction
from shared.time import utcnow, within_reach

BOARD_BOOKINGS = "board_bookings"
BOARD_ALERTS = "board_alerts"
BOARD_COMPLAINTS = "board_complaints"
BOARD_FEES = "board_fees"
BOARD_UNPAID = "board_unpaid"
BOARD = (BOARD_BOOKINGS, BOARD_ALERTS, BOARD_COMPLAINTS, BOARD_FEES, BOARD_UNPAID)
FINISHED = ("closed", "cancelled")

handlers = Handlers()


# What keeps a row on the board whatever its age (still going on, still owed), and the
# moments its events stamp on it.
OPEN: dict[str, Document] = {
    BOARD_BOOKINGS: {"status": {"$nin": list(FINISHED)}},
    BOARD_ALERTS: {"acknowledged_at": None},
    BOARD_COMPLAINTS: {"closed_at": None},
    # Owed by the customer, or theirs to be repaid (the card would not take a refund back).
    BOARD_FEES: {"status": {"$in": ["owed", "refund_declined"]}},
    BOARD_UNPAID: {"status": "due"},
}
# What keeps a row on operations' board besides being open, however long ago it last
# moved: a visit's money still in question (a refund the card would not take back, a
# provider not answering), a complaint's remedy made after another resolution answered it
# and not yet dealt with. `held` is kept on the row by every write (`_set`), from the row
# as it stands; a store's board does not show that money, so it is not held there.
HELD = "held"


def _is_set(field: str) -> Document:
    return {"$ne": [{"$ifNull": [field, None]}, None]}


HELD_NOW: dict[str, Document] = {
    BOARD_BOOKINGS: {
        "$or": [
            {"$gt": [{"$size": {"$ifNull": ["$refunds_owed", []]}}, 0]},
            _is_set("$refund_declined"),  # rows kept before
            {"$gt": [{"$size": {"$objectToArray": {"$ifNull": ["$provider_ops", {}]}}}, 0]},
        ]
    },
    BOARD_COMPLAINTS: {
        "$anyElementTrue": [
            {
                "$map": {
                    "input": {"$ifNull": ["$remedies", []]},
                    "as": "r",
                    "in": {
                        "$and": [
                            _is_set("$$r.withdrawn_at"),
                            {"$or": [_is_set("$$r.took_effect_at"), {"$eq": ["$$r.owed", True]}]},
                            {"$not": [_is_set("$$r.dealt_with_at")]},
                        ]
                    },
                }
            }
        ]
    },
}
# The same, as a query, for rows written before `held` was (or by an older gateway).
HELD_BEFORE: dict[str, Document] = {
    BOARD_BOOKINGS: {
        "$or": [
            {"refund_declined": {"$ne": None}},
            {"refunds_owed.0": {"$exists": True}},
            {"provider_unanswered": {"$ne": None}},
        ]
    },
    BOARD_COMPLAINTS: {
        "remedies": {
            "$elemMatch": {
                "withdrawn_at": {"$ne": None},
                "dealt_with_at": None,
                "$or": [{"took_effect_at": {"$ne": None}}, {"owed": True}],
            }
        }
    },
}
STAMPS: dict[str, tuple[str, ...]] = {
    BOARD_BOOKINGS: (
        "requested_at",
        "status_at",
        "assigned_at",
        "completed_at",
        "receipt_signed_at",
        "rated_at",
        "refund_declined_at",
        "provider_unanswered_since",
    ),
    BOARD_ALERTS: ("raised_at", "acknowledged_at"),
    BOARD_COMPLAINTS: ("opened_at", "first_response_at", "closed_at"),
    BOARD_FEES: ("owed_since", "settled_at", "refund_declined_at"),
    BOARD_UNPAID: ("due_since", "last_reminded_at", "paid_at", "written_off_at", "reopened_at"),
}

# Before rows carried `active_at`. Replace every gateway together when moving past them: an
# older one would put its indexes back and write rows without the stamp (until the next
# start stamps them).
LEGACY_INDEXES = frozenset({"store", "requested", "raised", "status", "open"})
INDEX_NOT_FOUND = 27


async def ensure_indexes(db: Database) -> None:
    """Every list is "open, or active since <the viewer's midnight>": an index for each half,
    and each again behind the store (a store's board), so a board reads what it shows and
    not every row the platform ever had."""
    for name in BOARD:
        (opened,) = OPEN[name]
        # The indexes of before: one that gives a list's order tempts the planner to walk
        # every row in that order rather than the two halves.
        kept = await db[name].index_information()
        for legacy in LEGACY_INDEXES.intersection(kept):
            try:
                await db[name].drop_index(legacy)
            except OperationFailure as exc:
                if exc.code != INDEX_NOT_FOUND:  # another gateway starting dropped it first
                    raise
        await db[name].create_indexes(
            [
                IndexModel([("active_at", ASCENDING)], name="active"),
                IndexModel([(opened, ASCENDING)], name="open_now"),
                IndexModel(
                    [("store_id", ASCENDING), ("active_at", ASCENDING)], name="store_active"
                ),
                IndexModel([("store_id", ASCENDING), (opened, ASCENDING)], name="store_open"),
            ]
        )
        if name in HELD_NOW:
            await db[name].create_indexes([IndexModel([(HELD, ASCENDING)], name=HELD, sparse=True)])
            await _backfill_held(db, name)
        # Rows kept before rows knew when they were last active: from their own stamps.
        stamps = [f"${stamp}" for stamp in STAMPS[name]]
        await db[name].update_many({"active_at": None}, [{"$set": {"active_at": {"$max": stamps}}}])


# Rows kept before `held` was, and rows an older gateway still writes during a rolling
# deploy, get it at each start. The first start reads every row; a later one only the rows
# active since the last backfill began, less a day, on the `active` index: an older
# gateway's write moves a row's `active_at` up to its event's moment, and no consumer lags
# a day. Without that bound every start read the whole board, every visit ever.
BACKFILLS = "board_backfills"
BACKFILL_OVERLAP = timedelta(days=1)


def held_backfill(name: str, since: datetime | None) -> Document:
    """The rows to mark `held`: what holds them, by the fields then, and no mark."""
    query: Document = {HELD: {"$exists": False}, **HELD_BEFORE[name]}
    if since is not None:
        # (A row of a gateway from before `active_at` has none yet: this start stamps it.)
        query["$and"] = [{"$or": [{"active_at": {"$gte": since}}, {"active_at": None}]}]
    return query


async def _backfill_held(db: Database, name: str) -> None:
    began, marker = utcnow(), f"{name}.{HELD}"
    last = await db[BACKFILLS].find_one({"_id": marker})
    since = last["began"] - BACKFILL_OVERLAP if last is not None else None
    await db[name].update_many(held_backfill(name, since), {"$set": {HELD: True}})
    await db[BACKFILLS].update_one({"_id": marker}, {"$max": {"began": began}}, upsert=True)


def occurred(tx: Transaction) -> datetime:
    return tx.causation.occurred_at if tx.causation else utcnow()


class Expr(dict[str, Any]):
    """An aggregation expression, computed from the stored row; anything else is a value."""


async def _set(
    tx: Transaction, collection: str, row_id: str, fields: dict[str, Any], *, upsert: bool = True
) -> None:
    """Upsert the fields this event owns (expressions may read what is stored); with
    `upsert=False`, only a row already there changes. The row's `active_at` moves up to the
    event's moment (or a later stamp it brings), which puts the row on that day's board."""
    if collection == BOARD_BOOKINGS and "previous_store_id" not in fields:
        # The store a reassignment took the row from hears that change only (its page drops
        # the row), not what happens to the visit afterwards.
        fields = {**fields, "previous_store_id": None}
    values = {k: v if isinstance(v, Expr) else {"$literal": v} for k, v in fields.items()}
    # The row's own stamps only: a visit's window or a complaint's next deadline may lie
    # ahead, and would keep the row on every board until then.
    stamped = [m for f in STAMPS[collection] if f in fields for m in _moments(fields[f])]
    latest = max([occurred(tx), *stamped])
    after: dict[str, Any] = {
        "rev": {"$add": [{"$ifNull": ["$rev", 0]}, 1]},
        "active_at": {"$max": ["$active_at", {"$literal": latest}]},
    }
    if collection in HELD_NOW:
        after[HELD] = {"$cond": [HELD_NOW[collection], True, "$$REMOVE"]}
    await tx.db[collection].update_one(
        {"_id": row_id},
        [{"$set": values}, {"$set": after}],
        upsert=upsert,
        session=tx.session,
    )


def _moments(value: object) -> list[datetime]:
    """Every moment in a field's value, expressions included."""
    if isinstance(value, datetime):
        return [value if value.tzinfo else value.replace(tzinfo=UTC)]
    if isinstance(value, dict):
        return [m for v in value.values() for m in _moments(v)]
    if isinstance(value, list | tuple):
        return [m for v in value for m in _moments(v)]
    return []


def _keep(field: str, value: object) -> Expr:
    """Set a field only if it is not set yet (the first assignment's time stays)."""
    return Expr({"$ifNull": [f"${field}", {"$literal": value}]})


def _if_newer(version: int, version_field: str, field: str, value: object) -> Expr:
    """The event's value if its version is newer than the stored one, else what is stored."""
    newer = {"$gt": [version, {"$ifNull": [f"${version_field}", -1]}]}
    return Expr({"$cond": [newer, {"$literal": value}, f"${field}"]})


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _window(tx: Transaction, start: datetime, end: datetime) -> dict[str, Any]:
    """The visit's window, from the latest event that set it: booked, moved, or kept by
    dispatch when the move came too late (two topics: one may overtake the other)."""
    at = occurred(tx)
    later = {"$gt": [{"$literal": at}, {"$ifNull": ["$window_at", {"$literal": EPOCH}]}]}
    return {
        "window_start": Expr({"$cond": [later, {"$literal": start}, "$window_start"]}),
        "window_end": Expr({"$cond": [later, {"$literal": end}, "$window_end"]}),
        "window_at": Expr({"$cond": [later, {"$literal": at}, "$window_at"]}),
    }


# ------------------------------------------------------------------ bookings --
@handlers.on(BookingRequested)
@handlers.on(BookingRequestedV1)
async def requested(tx: Transaction, e: BookingRequestedV1) -> None:
    booked_with = store_of(e)
    await _set(
        tx,
        BOARD_BOOKINGS,
        e.booking_id,
        {
            "customer_id": e.customer_id,
            "region": e.region,
            "timing": e.timing,
            "location": e.location.model_dump(),
            **_window(tx, e.window_start, e.window_end),
            "requested_at": _keep("requested_at", occurred(tx)),
            "status": _keep("status", "requested"),
            "currency": e.currency,
            # A booking with a store is on its board from the request (its technician's
            # store, once assigned, is the same one).
            "booked_store_id": booked_with,
            **({"store_id": _keep("store_id", booked_with)} if booked_with else {}),
        },
    )


@handlers.on(BookingRescheduled)
@handlers.on(RescheduleRefused)
async def window_set(tx: Transaction, e: BookingRescheduled | RescheduleRefused) -> None:
    """Moved by the customer, or kept by dispatch when the move came too late."""
    await _set(tx, BOARD_BOOKINGS, e.booking_id, _window(tx, e.window_start, e.window_end))


@handlers.on(BookingStatusChanged)
async def status_changed(tx: Transaction, e: BookingStatusChanged) -> None:
    await _set(
        tx,
        BOARD_BOOKINGS,
        e.booking_id,
        {
            "status": _if_newer(e.version, "status_version", "status", e.to_status),
            "status_at": _if_newer(e.version, "status_version", "status_at", e.at),
            # Why nobody was found holds while the booking waits for operations only (they
            # may send it back to matching: `dispatch.search_resumed`).
            **(
                {}
                if e.to_status == "dispatch_failed"
                else {
                    "dispatch_failed_reason": _if_newer(
                        e.version, "status_version", "dispatch_failed_reason", None
                    )
                }
            ),
            # last: those above compare with the version stored before this event
            "status_version": _if_newer(e.version, "status_version", "status_version", e.version),
            "customer_id": e.customer_id,
        },
    )


@handlers.on(BookingAwaitingOperations)
async def awaiting_operations(tx: Transaction, e: BookingAwaitingOperations) -> None:
    await _set(tx, BOARD_BOOKINGS, e.booking_id, {"dispatch_failed_reason": e.reason})


def _technician(
    e: TechnicianAssigned | TechnicianReassigned | TechnicianDetailsChanged,
) -> dict[str, object]:
    return {
        "technician_id": e.technician_id,
        "name": e.technician_name,
        "badge_number": e.badge_number,
        "store_id": e.store_id,
    }


@handlers.on(TechnicianAssigned)
async def assigned(tx: Transaction, e: TechnicianAssigned) -> None:
    await _set(
        tx,
        BOARD_BOOKINGS,
        e.booking_id,
        {
            "technician": _technician(e),
            "store_id": e.store_id,
            "assigned_at": _keep("assigned_at", occurred(tx)),
            "dispatch_failed_reason": None,
        },
    )


@handlers.on(TechnicianDetailsChanged)
async def details_changed(tx: Transaction, e: TechnicianDetailsChanged) -> None:
    await _set(tx, BOARD_BOOKINGS, e.booking_id, {"technician": _technician(e)})


def _technician_left() -> dict[str, object]:
    """The technician who had the visit is gone: the store that sent them hears once more,
    so its board drops the row, and their arrival is no longer the visit's."""
    return {
        "previous_store_id": Expr({"$ifNull": ["$store_id", None]}),
        "arrival_distance_m": None,
        "arrival_flagged": False,
    }


@handlers.on(TechnicianReassigned)
async def reassigned(tx: Transaction, e: TechnicianReassigned) -> None:
    await _set(
        tx,
        BOARD_BOOKINGS,
        e.booking_id,
        {
            **_technician_left(),
            "technician": _technician(e),
            "store_id": e.store_id,
            "assigned_at": _keep("assigned_at", occurred(tx)),
            "dispatch_failed_reason": None,
        },
    )


@handlers.on(TechnicianReleased)
async def released(tx: Transaction, e: TechnicianReleased) -> None:
    await _set(
        tx,
        BOARD_BOOKINGS,
        e.booking_id,
        {
            **_technician_left(),
            "technician": None,
            "store_id": Expr({"$ifNull": ["$booked_store_id", None]}),  # still that store's
            "assigned_at": None,  # today's figures count the next assignment, if any
        },
    )


@handlers.on(TechnicianArrived)
async def arrived(tx: Transaction, e: TechnicianArrived) -> None:
    await _set(
        tx,
        BOARD_BOOKINGS,
        e.booking_id,
        {"arrival_distance_m": round(e.distance_m, 1), "arrival_flagged": e.flagged},
    )


@handlers.on(ServiceCompleted)
@handlers.on(ServiceCompletedV1)
async def completed(tx: Transaction, e: ServiceCompletedV1) -> None:
    await _set(tx, BOARD_BOOKINGS, e.booking_id, {"completed_at": e.completed_at})


@handlers.on(ReceiptSigned)
async def receipt_signed(tx: Transaction, e: ReceiptSigned) -> None:
    await _set(
        tx,
        BOARD_BOOKINGS,
        e.booking_id,
        {"receipt_signed_at": e.signed_at, "receipt_total": e.total, "currency": e.currency},
    )


@handlers.on(ReviewSubmitted)
async def reviewed(tx: Transaction, e: ReviewSubmitted) -> None:
    await _set(tx, BOARD_BOOKINGS, e.booking_id, {"rating": e.rating, "rated_at": occurred(tx)})


# -------------------------------------------------------------------- alerts --
@handlers.on(SafetyAlert)
@handlers.on(SafetyAlertV1)
async def safety_alert(tx: Transaction, e: SafetyAlertV1) -> None:
    alert_id = e.alert_id or f"al_{tx.causation.event_id if tx.causation else e.at}"
    row = await tx.db[BOARD_BOOKINGS].find_one({"_id": e.booking_id}, session=tx.session)
    technician = (row or {}).get("technician")
    await _set(
        tx,
        BOARD_ALERTS,
        alert_id,
        {
            "booking_id": e.booking_id,
            "kind": e.kind,
            "severity": e.severity,
            "detail": e.detail,
            "raised_at": e.at,
            "customer_id": e.customer_id,
            "technician": technician
            if technician and technician.get("technician_id") == e.technician_id
            else None,
            "technician_id": e.technician_id,
            "store_id": e.store_id,
        },
    )


@handlers.on(SafetyAlertAcknowledged)
async def acknowledged(tx: Transaction, e: SafetyAlertAcknowledged) -> None:
    await _set(
        tx,
        BOARD_ALERTS,
        e.alert_id,
        {
            "booking_id": e.booking_id,
            "acknowledged_by": e.acknowledged_by,
            "acknowledged_at": e.acknowledged_at,
            "note": e.note,
        },
    )


# ---------------------------------------------------------------- complaints --
@handlers.on(ComplaintUpdated)
@handlers.on(ComplaintUpdatedV3)
@handlers.on(ComplaintUpdatedV2)
@handlers.on(ComplaintUpdatedV1)
async def complaint_updated(tx: Transaction, e: ComplaintUpdatedV1) -> None:
    """Version 1 names no remedies: those stored stay as they are. Version 2's say nothing of
    one dealt with (none was). Before version 4, nothing of what was taken off the receipt:
    what is stored stays."""
    state = e.model_dump(exclude={"complaint_id", "version"})
    fields: dict[str, Any] = {k: _if_newer(e.version, "version", k, v) for k, v in state.items()}
    fields["version"] = _if_newer(e.version, "version", "version", e.version)
    await _set(tx, BOARD_COMPLAINTS, e.complaint_id, fields)


# ---------------------------------------------------------------------- fees --
# A fee's events share its booking's key, so they arrive in the order they happened.
def _fee(
    e: CancellationFeeEvent | RefundDeclined | RefundRepaid, status: str, **fields: Any
) -> dict[str, Any]:
    about = e.model_dump(include={"booking_id", "customer_id", "amount", "currency"})
    return {**about, "status": status, **fields}


@handlers.on(CancellationFeeOwed)
async def fee_owed(tx: Transaction, e: CancellationFeeOwed) -> None:
    owed = _fee(e, "owed", note=e.reason, owed_since=_keep("owed_since", occurred(tx)))
    await _set(tx, BOARD_FEES, e.fee_id, owed)


@handlers.on(CancellationFeePaid)
async def fee_paid(tx: Transaction, e: CancellationFeePaid) -> None:
    await _set(tx, BOARD_FEES, e.fee_id, _fee(e, "paid", settled_at=e.paid_at))


@handlers.on(CancellationFeeWaived)
async def fee_waived(tx: Transaction, e: CancellationFeeWaived) -> None:
    waived = _fee(e, "waived", note=e.reason, settled_at=e.waived_at)
    await _set(tx, BOARD_FEES, e.fee_id, waived)


@handlers.on(CancellationFeeRefunded)
async def fee_refunded(tx: Transaction, e: CancellationFeeRefunded) -> None:
    refunded = _fee(e, "refunded", note=e.reason, settled_at=e.refunded_at)
    await _set(tx, BOARD_FEES, e.fee_id, refunded)


@handlers.on(RefundDeclined)
async def refund_declined(tx: Transaction, e: RefundDeclined) -> None:
    """The card would not take the money back: operations repay it (on the day's board: a
    fee's on their list of fees, a visit's on its row, theirs alone)."""
    note = f"refund declined by the provider: {e.reason}"
    if e.fee_id is not None:
        fee = _fee(e, "refund_declined", note=note, refund_declined_at=e.declined_at)
        await _set(tx, BOARD_FEES, e.fee_id, fee)
        return
    await _refund_owed(tx, e, e.amount, note=note, since=e.declined_at)


@handlers.on(RefundIssued)
async def refund_issued(tx: Transaction, e: RefundIssued) -> None:
    """Cash to hand back stays on the row, like a decline, until operations record it given.
    A refund to the card settles nothing owed before: each refund owes its own money."""
    if e.to_cash > 0:
        note = "refund to hand back in cash"
        await _refund_owed(tx, e, e.to_cash, note=note, since=occurred(tx))


@handlers.on(RefundRepaid)
async def refund_repaid(tx: Transaction, e: RefundRepaid) -> None:
    """Operations repaid another way what the card would not take back (or the cash)."""
    if e.fee_id is None:
        await _refund_given(tx, e.booking_id, e.refund_id)
        return
    note = f"refund repaid {REPAID[e.way]}"
    await _set(tx, BOARD_FEES, e.fee_id, _fee(e, "refunded", note=note, settled_at=e.repaid_at))


# A visit's refunds still owed, each on its own (`refunds_owed`, a list: ids may hold dots),
# until operations record that one given. A visit may owe two (a complaint's refund and
# another, both refused), and a refund to the card settles neither.
def _others(refund_id: str) -> dict[str, Any]:
    stored = {"$ifNull": ["$refunds_owed", []]}
    given = {"$literal": refund_id}
    return {"$filter": {"input": stored, "cond": {"$ne": ["$$this.refund_id", given]}}}


async def _refund_owed(
    tx: Transaction, e: RefundDeclined | RefundIssued, amount: int, *, note: str, since: datetime
) -> None:
    """A visit's refund still the customer's money (declined, or cash to hand back): on its
    row until operations record it given (`_refund_given`)."""
    owed = {
        "refund_id": e.refund_id,
        "receipt_id": e.receipt_id,
        "amount": amount,
        "note": note,
        "since": since,
    }
    listed = Expr({"$concatArrays": [_others(e.refund_id), [{"$literal": owed}]]})
    await _set(tx, BOARD_BOOKINGS, e.booking_id, {"refunds_owed": listed, "currency": e.currency})


# What a visit's row said of its one refund owed, before each was kept on its own: read as
# one of `refunds_owed`, and cleared when that refund is given (or any, if it named none).
REFUND_OWED_FIELDS = (
    "refund_declined",
    "refund_declined_note",
    "refund_declined_id",
    "refund_declined_receipt_id",
)


async def _refund_given(tx: Transaction, booking_id: str, refund_id: str) -> None:
    given = {"$literal": refund_id}
    theirs = {"$eq": [{"$ifNull": ["$refund_declined_id", given]}, given]}
    cleared: dict[str, Any] = {
        field: Expr({"$cond": [theirs, "$$REMOVE", f"${field}"]}) for field in REFUND_OWED_FIELDS
    }
    cleared["refunds_owed"] = Expr(_others(refund_id))
    await _set(tx, BOARD_BOOKINGS, booking_id, cleared, upsert=False)


def _refunds_owed(doc: Document) -> dict[str, Any]:
    """The row's refunds owed, oldest first, and their sum, notes and since when."""
    owed = [RefundOwed.model_validate(o) for o in doc.get("refunds_owed") or []]
    if doc.get("refund_declined") is not None:  # a row kept before
        legacy = {
            "refund_id": doc.get("refund_declined_id"),
            "receipt_id": doc.get("refund_declined_receipt_id"),
            "amount": doc["refund_declined"],
            "note": doc.get("refund_declined_note") or "",
            "since": doc.get("refund_declined_at"),
        }
        owed.append(RefundOwed.model_validate(legacy))
    owed.sort(key=lambda o: o.since or EPOCH)
    if not owed:
        return {"refunds_owed": [], **dict.fromkeys(REFUND_SUMMARY)}
    return {
        "refunds_owed": owed,
        "refund_declined": sum(o.amount for o in owed),
        "refund_declined_note": "; ".join(o.note for o in owed if o.note),
        "refund_declined_at": owed[0].since,
    }


REFUND_SUMMARY = ("refund_declined", "refund_declined_note", "refund_declined_at")


# Kept per operation (`provider_ops`, by op_id): a visit may have a charge and refunds
# unanswered at once, and each leaves the board when the provider answers it.
@handlers.on(ProviderNotAnswering)
async def provider_not_answering(tx: Transaction, e: ProviderNotAnswering) -> None:
    """Payments keeps asking; operations look into the provider (their row alone)."""
    what = f"{e.kind} of {money(e.amount, e.currency)}"
    op = {"asks": e.asks, "note": f"{what}: {e.asks} asks unanswered", "since": e.first_asked_at}
    ops = Expr({"$mergeObjects": [{"$ifNull": ["$provider_ops", {}]}, {"$literal": {e.op_id: op}}]})
    await _set(tx, BOARD_BOOKINGS, e.booking_id, {"provider_ops": ops})


@handlers.on(ProviderAnswered)
async def provider_answered(tx: Transaction, e: ProviderAnswered) -> None:
    answered = {"field": {"$literal": e.op_id}, "input": {"$ifNull": ["$provider_ops", {}]}}
    cleared = {
        "provider_ops": Expr({"$unsetField": answered}),
        # Rows written before operations were kept apart.
        "provider_unanswered": None,
        "provider_unanswered_note": None,
    }
    await _set(tx, BOARD_BOOKINGS, e.booking_id, cleared, upsert=False)


def _provider_unanswered(doc: Document) -> dict[str, Any]:
    """The row's provider fields, from the operations it has not answered: their asks
    summed, their notes, and since when the first was asked."""
    ops = sorted(doc["provider_ops"].values(), key=lambda op: op["since"])
    if not ops:
        return dict.fromkeys(PROVIDER_FIELDS)
    return {
        "provider_unanswered": sum(op["asks"] for op in ops),
        "provider_unanswered_note": "; ".join(op["note"] for op in ops),
        "provider_unanswered_since": ops[0]["since"],
    }


PROVIDER_FIELDS = ("provider_unanswered", "provider_unanswered_note", "provider_unanswered_since")


# -------------------------------------------------------------------- unpaid --
# A receipt's events share its booking's key too, so they arrive in the order they
# happened. Only money left due makes a row: a card declined, or cash to collect at the door
# (a row until the technician records it, usually moments later).
# What an unpaid row takes from each payment fact that carries it (a decline says nothing of
# the way, the technician or the store; cash due says nothing of the way).
UNPAID_FACTS = {
    *("booking_id", "customer_id", "amount", "currency"),
    *("way", "technician_id", "store_id"),
}


def _unpaid(
    e: CashDue | PaymentFailed | PaymentOverdue | PaymentWrittenOff | WriteOffReversed,
    **fields: Any,
) -> dict[str, Any]:
    about = e.model_dump(include=UNPAID_FACTS)
    # Paid stays paid, written off stays written off: a reminder that crossed either changes
    # nothing.
    written_off = {"$cond": [{"$gt": ["$written_off_at", None]}, "written_off", "due"]}
    due = Expr({"$cond": [{"$gt": ["$paid_at", None]}, "paid", written_off]})
    return {**about, "status": due, **fields}


@handlers.on(CashDue)
async def cash_due(tx: Transaction, e: CashDue) -> None:
    row = _unpaid(
        e,
        way="cash",
        note="no card on file: cash at the door",
        due_since=_keep("due_since", occurred(tx)),
    )
    await _set(tx, BOARD_UNPAID, e.receipt_id, row)


@handlers.on(PaymentFailed)
async def payment_failed(tx: Transaction, e: PaymentFailed) -> None:
    # The decline does not say whose visit it was; the booking's row does, so the store
    # sees its visit unpaid at once, not at the first reminder.
    visit = await tx.db[BOARD_BOOKINGS].find_one(
        {"_id": e.booking_id}, {"store_id": 1, "technician.technician_id": 1}, session=tx.session
    )
    whose = {}
    if visit is not None:
        whose = {
            "store_id": _keep("store_id", visit.get("store_id")),
            "technician_id": _keep(
                "technician_id", (visit.get("technician") or {}).get("technician_id")
            ),
        }
    row = _unpaid(
        e,
        way="card",
        note=e.reason,
        declined_because=e.reason,  # operations see why; a store only that it was declined
        due_since=_keep("due_since", occurred(tx)),
        **whose,
    )
    await _set(tx, BOARD_UNPAID, e.receipt_id, row)


@handlers.on(PaymentOverdue)
async def payment_overdue(tx: Transaction, e: PaymentOverdue) -> None:
    row = _unpaid(
        e,
        due_since=_keep("due_since", e.due_since),
        reminders=e.reminder,
        last_reminded_at=occurred(tx),
    )
    await _set(tx, BOARD_UNPAID, e.receipt_id, row)


@handlers.on(PaymentWrittenOff)
async def payment_written_off(tx: Transaction, e: PaymentWrittenOff) -> None:
    row = _unpaid(
        e,
        status="written_off",  # payments writes off only what nobody paid
        note="written off by operations",
        write_off_reason=e.reason,  # operations' alone: stores do not see it
        due_since=_keep("due_since", occurred(tx)),
        written_off_at=e.written_off_at,
    )
    await _set(tx, BOARD_UNPAID, e.receipt_id, row)


@handlers.on(WriteOffReversed)
async def write_off_reversed(tx: Transaction, e: WriteOffReversed) -> None:
    row = _unpaid(
        e,
        status="due",  # payments reopens only what it wrote off: nothing paid
        note="reopened by operations: due again",
        write_off_reason=None,
        written_off_at=None,
        reopened_at=e.reopened_at,
    )
    await _set(tx, BOARD_UNPAID, e.receipt_id, row)


@handlers.on(PaymentSettled)
async def payment_settled(tx: Transaction, e: PaymentSettled) -> None:
    paid = {"status": "paid", "paid_at": e.settled_at}
    await _set(tx, BOARD_UNPAID, e.receipt_id, paid, upsert=False)


# -------------------------------------------------------------------- reading --
def scope_of(actor: Actor) -> dict[str, str]:
    """Operations see everything; a store its own technicians' bookings, alerts, complaints."""
    return actor.store_scope(what="the board")


def viewer(actor: Actor) -> str:
    return "ops" if actor.is_ops else f"store:{actor.store_id}"


def _row(doc: Document) -> dict[str, Any]:
    data = dict(doc)
    data.setdefault("booking_id", data["_id"])
    return data


def booking_row(doc: Document, actor: Actor) -> BookingRow:
    if not actor.is_ops and doc.get("store_id") != actor.store_id:
        # A row that has just left this store (reassigned): enough for its page to drop it,
        # nothing of the visit it no longer has.
        return BookingRow(
            booking_id=doc["_id"],
            status=doc.get("status", "requested"),
            store_id=doc.get("store_id"),
            rev=doc.get("rev", 0),
        )
    fields = {k: v for k, v in _row(doc).items() if k not in REFUND_OWED_FIELDS}
    if "provider_ops" in doc:
        fields |= _provider_unanswered(doc)
    fields |= _refunds_owed(doc)
    row = BookingRow.model_validate({**fields, "booking_id": doc["_id"]})
    if not actor.is_ops:  # a store never sees where the customer lives, nor who they are
        row.location, row.customer_id, row.refunds_owed = None, None, []
        for field in (*REFUND_SUMMARY, *PROVIDER_FIELDS):
            setattr(row, field, None)
    return row


def alert_row(doc: Document, actor: Actor) -> AlertRow:
    row = AlertRow.model_validate({**doc, "alert_id": doc["_id"]})
    if not actor.is_ops:  # nor, on an alert, who the customer is
        row.customer_id = None
    return row


def complaint_row(doc: Document, actor: Actor) -> ComplaintRow:
    row = ComplaintRow.model_validate({**doc, "complaint_id": doc["_id"]})
    if not actor.is_ops:  # who at operations has it: a staff member's e-mail, theirs alone
        row.owner = None  # (and their words on a remedy made twice)
        row.remedies = [r.model_copy(update={"dealt_with": None}) for r in row.remedies]
    return row


R = TypeVar("R")
Listed = tuple[list[R], int]  # the rows shown, and how many there are in all


async def capped(
    collection: AsyncCollection[Document],
    query: Document,
    sort: tuple[str, int],
    limit: int,
    after: Document | None = None,
) -> tuple[list[Document], int]:
    """At most `limit` documents in the order `sort` (then `_id`), those after the row
    `after` if given, and how many match in all (counted only when some were left out: a
    board that fits costs no count). Pages meet without a gap or a row twice, however many
    rows come or go before the page read last."""
    narrowed = {"$and": [query, following(sort, after)]} if after is not None else query
    docs = (
        await collection.find(narrowed).sort([sort, ("_id", ASCENDING)]).limit(limit + 1).to_list()
    )
    if len(docs) > limit or after is not None:
        return docs[:limit], await collection.count_documents(query)
    return docs, len(docs)


def following(sort: tuple[str, int], row: Document) -> Document:
    """The rows after `row` in the order `sort`, then `_id`. MongoDB orders a missing or null
    field before every date: first when ascending, last when descending."""
    field, direction = sort
    value, row_id = row.get(field), row["_id"]
    tie = {field: value, "_id": {"$gt": row_id}}
    if value is None:
        return {"$or": [tie, {field: {"$ne": None}}]} if direction == ASCENDING else tie
    beyond = {field: {"$gt" if direction == ASCENDING else "$lt": value}}
    rest = [beyond, tie] if direction == ASCENDING else [beyond, tie, {field: None}]
    return {"$or": rest}


def on_board(actor: Actor, name: str, since: datetime) -> Document:
    """A list's rows for this viewer: open, or active since the viewer's midnight (and for
    operations, visits whose money is still in question)."""
    shown = [OPEN[name], {"active_at": {"$gte": since}}]
    if actor.is_ops and name in HELD_NOW:
        shown.append({HELD: True})
    return {**scope_of(actor), "$or": shown}


# Each list's order on the board: the newest first, or what has waited longest.
ORDER: dict[str, tuple[str, int]] = {
    BOARD_BOOKINGS: ("requested_at", DESCENDING),
    BOARD_ALERTS: ("raised_at", DESCENDING),
    BOARD_COMPLAINTS: ("opened_at", DESCENDING),
    BOARD_FEES: ("owed_since", ASCENDING),
    BOARD_UNPAID: ("due_since", ASCENDING),
}


def cursor(stamp: datetime | None, row_id: str) -> str:
    """Where a page ends: the last row's place in its list's order (its stamp and id), not
    the row itself, which may since have moved elsewhere or out of this viewer's sight."""
    place = {"at": stamp.isoformat() if stamp else None, "id": row_id}
    return base64.urlsafe_b64encode(json.dumps(place).encode()).decode().rstrip("=")


def _place(name: str, after: str) -> Document:
    """The order's key at a cursor. A forged one only moves within the viewer's own rows:
    the query it narrows is scoped to the viewer all the same."""
    try:
        place = json.loads(base64.urlsafe_b64decode(after + "=" * (-len(after) % 4)))
        at = place["at"]
        stamp = within_reach(datetime.fromisoformat(at)) if at is not None else None
        row_id = place["id"]
        if not isinstance(row_id, str):
            raise TypeError(row_id)
    except (ValueError, TypeError, KeyError) as exc:
        raise Unprocessable(
            "after: not a cursor this list gave (next_after)", field="after"
        ) from exc
    return {"_id": row_id, ORDER[name][0]: stamp}


async def _page(
    db: Database, actor: Actor, name: str, since: datetime, *, limit: int, after: str | None
) -> tuple[list[Document], int]:
    last = _place(name, after) if after is not None else None
    return await capped(db[name], on_board(actor, name, since), ORDER[name], limit, last)


async def bookings(
    db: Database, actor: Actor, since: datetime, limit: int, after: str | None = None
) -> Listed[BookingRow]:
    """What is still going on, and everything that happened today."""
    docs, total = await _page(db, actor, BOARD_BOOKINGS, since, limit=limit, after=after)
    return [booking_row(d, actor) for d in docs], total


async def alerts(
    db: Database, actor: Actor, since: datetime, limit: int, after: str | None = None
) -> Listed[AlertRow]:
    """Every alert nobody acknowledged, and today's."""
    docs, total = await _page(db, actor, BOARD_ALERTS, since, limit=limit, after=after)
    return [alert_row(d, actor) for d in docs], total


async def complaints(
    db: Database, actor: Actor, since: datetime, limit: int, after: str | None = None
) -> Listed[ComplaintRow]:
    """Every complaint still open, and those that moved today."""
    docs, total = await _page(db, actor, BOARD_COMPLAINTS, since, limit=limit, after=after)
    return [complaint_row(d, actor) for d in docs], total


def fee_row(doc: Document) -> FeeRow:
    return FeeRow.model_validate({**doc, "fee_id": doc["_id"]})


async def fees(
    db: Database, actor: Actor, since: datetime, limit: int, after: str | None = None
) -> Listed[FeeRow]:
    """Every fee still owed, and those settled today: operations' alone."""
    scope_of(actor)  # anyone but operations and stores is refused here too
    if not actor.is_ops:
        return [], 0
    docs, total = await _page(db, actor, BOARD_FEES, since, limit=limit, after=after)
    return [fee_row(d) for d in docs], total


CARD_DECLINED = "the customer's card was declined"


def unpaid_row(doc: Document, actor: Actor) -> UnpaidRow:
    row = UnpaidRow.model_validate({**doc, "receipt_id": doc["_id"]})
    declined_because = doc.get("declined_because")
    if not actor.is_ops:
        # A store follows its technicians' cash: not who the customer is, nor what their
        # bank said of their card.
        if declined_because is not None and row.note == declined_because:
            row.note = CARD_DECLINED
        row.customer_id = row.write_off_reason = None
    return row


async def unpaid(
    db: Database, actor: Actor, since: datetime, limit: int, after: str | None = None
) -> Listed[UnpaidRow]:
    """Every signed visit still unpaid, longest due first, and those paid or written off
    today."""
    docs, total = await _page(db, actor, BOARD_UNPAID, since, limit=limit, after=after)
    return [unpaid_row(d, actor) for d in docs], total


def _since(field: str, since: datetime) -> Document:
    return {field: {"$gte": since}}


def _seconds(later: str, earlier: str) -> Document:
    return {"$divide": [{"$subtract": [f"${later}", f"${earlier}"]}, 1000]}


def tally_pipelines(actor: Actor, since: datetime) -> tuple[list[Document], list[Document]]:
    """What `tally` asks of board_bookings and of board_complaints: each starts from the rows
    active since `since` (an index), and sums them by the moment each figure is about."""
    today = {**scope_of(actor), "active_at": {"$gte": since}}
    booked = _since("requested_at", since)
    waited = {**booked, "assigned_at": {"$ne": None}}
    per_booking: list[Document] = [
        {"$match": today},
        {
            "$facet": {
                "booked": [
                    {"$match": booked},
                    {
                        "$group": {
                            "_id": None,
                            "n": {"$sum": 1},
                            "assigned": {
                                "$sum": {"$cond": [{"$gt": ["$assigned_at", None]}, 1, 0]}
                            },
                        }
                    },
                ],
                "waits": [
                    {"$match": waited},
                    {
                        "$group": {
                            "_id": None,
                            "s": {"$push": _seconds("assigned_at", "requested_at")},
                        }
                    },
                ],
                "completed": [{"$match": _since("completed_at", since)}, {"$count": "n"}],
                "signed": [
                    {"$match": _since("receipt_signed_at", since)},
                    {
                        "$group": {
                            "_id": "$currency",
                            "n": {"$sum": 1},
                            "total": {"$sum": "$receipt_total"},
                            "priced": {"$sum": {"$cond": [{"$isNumber": "$receipt_total"}, 1, 0]}},
                        }
                    },
                ],
                "rated": [
                    {"$match": {**_since("rated_at", since), "rating": {"$gt": 0}}},
                    {"$group": {"_id": None, "n": {"$sum": 1}, "sum": {"$sum": "$rating"}}},
                ],
            }
        },
    ]
    responded: list[Document] = [
        {"$match": {**today, **_since("first_response_at", since)}},
        {"$group": {"_id": None, "s": {"$push": _seconds("first_response_at", "opened_at")}}},
    ]
    return per_booking, responded


async def tally(db: Database, actor: Actor, since: datetime) -> DayTally:
    """Today's sums over every row active today (not just the rows a list shows), counted by
    MongoDB. The medians' inputs come back whole: one number per booking assigned today,
    well within a reply for a city's day."""
    per_booking, responded = tally_pipelines(actor, since)
    (counted,), responses = await asyncio.gather(
        _aggregated(db[BOARD_BOOKINGS], per_booking),
        _aggregated(db[BOARD_COMPLAINTS], responded),
    )
    first = {name: rows[0] if rows else {} for name, rows in counted.items()}
    signed = counted["signed"]
    return DayTally(
        bookings=first["booked"].get("n", 0),
        assigned=first["booked"].get("assigned", 0),
        waits_s=tuple(first["waits"].get("s", ())),
        completed=first["completed"].get("n", 0),
        signed=sum(group["n"] for group in signed),
        revenue={g["_id"]: g["total"] for g in signed if g["_id"] and g["priced"]},
        ratings=first["rated"].get("n", 0),
        rating_sum=first["rated"].get("sum", 0),
        first_responses_s=tuple(responses[0]["s"]) if responses else (),
    )


async def _aggregated(
    collection: AsyncCollection[Document], pipeline: list[Document]
) -> list[Document]:
    return await (await collection.aggregate(pipeline)).to_list()
