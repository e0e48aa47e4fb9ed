"""The envelope and the schema registry."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from pydantic import ValidationError

from shared.consumer import Handlers
from shared.events import all_specs, parse_payload
from shared.events.booking import (
    BookingCancelled,
    BookingConfirmed,
    BookingStatusChanged,
    FollowUpDue,
)
from shared.events.envelope import Envelope, EventPayload
from shared.events.registry import UnknownEvent, event
from shared.outbox import Transaction, outbox_row
from shared.settings import Settings


def confirmed() -> BookingConfirmed:
    return BookingConfirmed(
        booking_id="bk_9",
        customer_id="cus_1",
        technician_id="tech_1",
        technician_name="Marta Sousa",
        badge_number="LX-1001",
    )


def test_wrap_fills_the_envelope_from_the_payload() -> None:
    cause = uuid.uuid4()
    env = Envelope.wrap(confirmed(), producer="booking", causation_id=str(cause))
    assert env.type == "booking.confirmed"
    assert env.schema_version == 1
    assert env.aggregate_id == "bk_9"
    assert env.correlation_id == "bk_9"  # a chain starts at its aggregate by default
    assert env.causation_id == str(cause)
    assert env.producer == "booking"
    assert env.occurred_at.tzinfo is not None
    with_correlation = Envelope.wrap(confirmed(), producer="b", correlation_id="bk_root")
    assert with_correlation.correlation_id == "bk_root"


def test_envelope_round_trips_through_bytes() -> None:
    env = Envelope.wrap(confirmed(), producer="booking")
    back = Envelope.from_bytes(env.to_bytes())
    assert back == env
    assert parse_payload(back) == confirmed()


def test_naive_time_and_unknown_fields_are_refused() -> None:
    raw = json.loads(Envelope.wrap(confirmed(), producer="b").to_bytes())
    with pytest.raises(ValidationError):
        Envelope.model_validate({**raw, "occurred_at": datetime(2030, 1, 1).isoformat()})
    with pytest.raises(ValidationError):
        Envelope.model_validate({**raw, "extra": 1})
    with pytest.raises(ValidationError):
        BookingConfirmed.model_validate({**raw["payload"], "price": 1})


def test_unregistered_type_or_version_is_unknown() -> None:
    env = Envelope.wrap(confirmed(), producer="b")
    with pytest.raises(UnknownEvent):
        parse_payload(env.model_copy(update={"schema_version": 99}))
    with pytest.raises(UnknownEvent):
        parse_payload(env.model_copy(update={"type": "booking.nonexistent"}))


def test_registering_one_type_and_version_twice_fails() -> None:
    name = f"unit.t{uuid.uuid4().hex}"

    @event(name, version=1, stream="unit", key="thing_id")
    class First(EventPayload):
        thing_id: str

    with pytest.raises(ValueError, match="registered twice"):

        @event(name, version=1, stream="unit", key="thing_id")
        class Second(EventPayload):
            thing_id: str


def test_a_key_field_must_exist() -> None:
    with pytest.raises(ValueError, match="no key field"):

        @event(f"unit.t{uuid.uuid4().hex}", version=1, stream="unit", key="missing")
        class Keyless(EventPayload):
            thing_id: str


def test_every_platform_event_is_keyed_and_on_a_stream_of_the_service_its_name_says() -> None:
    specs = [s for s in all_specs() if s.model.__module__.startswith("shared.events.")]
    assert len(specs) >= 9
    for spec in specs:
        assert spec.key_field in spec.model.model_fields, spec.event_type
        # A service publishes on its own streams only: `booking`, or one under it.
        service = spec.event_type.split(".", 1)[0]
        assert spec.stream == service or spec.stream.startswith(f"{service}."), spec.event_type
        assert spec.description, f"{spec.event_type} needs a docstring for the catalogue"


def test_the_outbox_sends_each_event_to_its_streams_topic() -> None:
    settings = Settings().model_copy(update={"topic_prefix": "px."})
    now = datetime.now(UTC)
    confirmed_event = Envelope.wrap(confirmed(), producer="booking")
    changed = Envelope.wrap(
        BookingStatusChanged(
            booking_id="bk_1",
            customer_id="cus_1",
            from_status="requested",
            to_status="assigned",
            at=now,
            version=1,
        ),
        producer="booking",
    )
    assert outbox_row(settings, confirmed_event, now, 0)["topic"] == "px.booking.events"
    assert outbox_row(settings, changed, now, 1)["topic"] == "px.booking.timeline.events"


def test_handlers_map_types_to_prefixed_topics_and_refuse_doubles() -> None:
    handlers = Handlers()

    @handlers.on(BookingConfirmed)
    async def first(tx: Transaction, e: BookingConfirmed) -> None: ...

    with pytest.raises(ValueError, match="two handlers"):

        @handlers.on(BookingConfirmed)
        async def second(tx: Transaction, e: BookingConfirmed) -> None: ...

    settings = Settings().model_copy(update={"topic_prefix": "px."})
    assert handlers.topics(settings) == ["px.booking.events"]
    versions = handlers.lookup("booking.confirmed")
    assert versions is not None
    assert list(versions) == [1]
    assert handlers.lookup("booking.requested") is None
    assert datetime.now(UTC).tzinfo is not None


async def test_merged_handlers_run_both_in_turn_where_both_react() -> None:
    """Notifications and the ops board both react to one event in one transaction."""
    ran: list[str] = []
    notify, board = Handlers(), Handlers()

    @notify.on(BookingConfirmed)
    async def tell(tx: Transaction, e: BookingConfirmed) -> None:
        ran.append(f"tell {e.booking_id}")

    @board.on(BookingConfirmed)
    async def show(tx: Transaction, e: BookingConfirmed) -> None:
        ran.append(f"show {e.booking_id}")

    @board.on(BookingCancelled)
    async def drop(tx: Transaction, e: BookingCancelled) -> None:
        ran.append(f"drop {e.booking_id}")

    both = notify.merged(board)
    assert {m.event_type for m in both.models()} == {"booking.confirmed", "booking.cancelled"}
    confirmed = both.lookup("booking.confirmed")
    assert confirmed is not None
    event = BookingConfirmed(
        booking_id="bk_1", customer_id="c", technician_id="t", technician_name="n", badge_number="b"
    )
    await confirmed[1][1](cast(Transaction, None), event)
    assert ran == ["tell bk_1", "show bk_1"]
    assert notify.lookup("booking.cancelled") is None  # the originals are unchanged


def test_follow_up_due_version_2_is_a_thank_you_naming_its_own_visit_among_the_others() -> None:
    fields: dict[str, Any] = {
        "follow_up_id": "fu_bk_1_thank_you",
        "kind": "thank_you",
        "customer_id": "cus_1",
        "booking_id": "bk_1",
        "booking_ids": ["bk_1", "bk_2"],
        "services": ["Water filter replacement", "Gel manicure"],
        "due_at": datetime(2030, 5, 2, 9, 0, tzinfo=UTC),
    }
    assert FollowUpDue.model_validate(fields).booking_ids == ["bk_1", "bk_2"]
    for wrong in ({"kind": "care_due"}, {"booking_id": "bk_3"}, {"booking_ids": ["bk_1"]}):
        with pytest.raises(ValidationError):
            FollowUpDue.model_validate({**fields, **wrong})
