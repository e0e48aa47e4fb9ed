"""Event envelope, registry and every event schema of the platform.

Importing this package registers every event type, so the registry is complete
wherever it is used (services, the catalogue generator, tests).
"""

from shared.events import booking, dispatch, payments, reviews
from shared.events.envelope import Envelope, EventPayload
from shared.events.registry import (
    EventSpec,
    UnknownEvent,
    all_specs,
    event,
    parse_payload,
    spec_of,
    stream_topic,
)

__all__ = [
    "Envelope",
    "EventPayload",
    "EventSpec",
    "UnknownEvent",
    "all_specs",
    "booking",
    "dispatch",
    "event",
    "parse_payload",
    "payments",
    "reviews",
    "spec_of",
    "stream_topic",
]
