"""The registry of versioned event types: what may be published and how to read it."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from shared.events.envelope import Envelope, EventPayload


class UnknownEvent(LookupError):
    """No schema is registered for this (type, version)."""


@dataclass(frozen=True)
class EventSpec:
    event_type: str
    version: int
    stream: str
    key_field: str
    model: type[EventPayload]

    @property
    def producer(self) -> str:
        """The service that publishes it: its type's first segment (`booking.requested`)."""
        return self.event_type.split(".", 1)[0]

    @property
    def description(self) -> str:
        return inspect.cleandoc(self.model.__doc__ or "")


_REGISTRY: dict[tuple[str, int], EventSpec] = {}
P = TypeVar("P", bound=EventPayload)


def event(event_type: str, *, version: int, stream: str, key: str) -> Callable[[type[P]], type[P]]:
    """Class decorator: register a payload model as `event_type` v`version` on `stream`."""

    def register(model: type[P]) -> type[P]:
        if (event_type, version) in _REGISTRY:
            raise ValueError(f"{event_type} v{version} is registered twice")
        if key not in model.model_fields:
            raise ValueError(f"{model.__name__} has no key field {key!r}")
        model.event_type = event_type
        model.schema_version = version
        model.stream = stream
        model.key_field = key
        _REGISTRY[(event_type, version)] = EventSpec(event_type, version, stream, key, model)
        return model

    return register


def spec_of(event_type: str, version: int) -> EventSpec:
    try:
        return _REGISTRY[(event_type, version)]
    except KeyError:
        raise UnknownEvent(f"no schema registered for {event_type} v{version}") from None


def is_known_type(event_type: str) -> bool:
    return any(t == event_type for t, _ in _REGISTRY)


def parse_payload(envelope: Envelope) -> EventPayload:
    """Validate the raw payload against its registered schema (raises on mismatch)."""
    return spec_of(envelope.type, envelope.schema_version).model.model_validate(envelope.payload)


def all_specs() -> list[EventSpec]:
    return sorted(_REGISTRY.values(), key=lambda s: (s.stream, s.event_type, s.version))


def streams() -> list[str]:
    return sorted({s.stream for s in _REGISTRY.values()})


def stream_topic(stream: str) -> str:
    """The un-prefixed Kafka topic a stream's events go to."""
    return f"{stream}.events"
