"""The one envelope every event travels in, and the base class of every payload."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.time import within_reach


class EventPayload(BaseModel):
    """Base of every event payload. Subclasses are registered with `@event`.

    Class attributes (set by the decorator): `event_type` (e.g. "booking.requested"),
    `schema_version`, `stream` (the producing service's topic), `key_field` (the payload
    field that is the aggregate id and so the Kafka key).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_type: ClassVar[str]
    schema_version: ClassVar[int]
    stream: ClassVar[str]
    key_field: ClassVar[str]

    def aggregate_id(self) -> str:
        return str(getattr(self, self.key_field))


class Envelope(BaseModel):
    """What goes on the wire. `payload` is kept raw here and typed by the registry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str = Field(min_length=1)
    schema_version: int = Field(ge=1)
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    aggregate_id: str = Field(min_length=1)
    correlation_id: str = Field(min_length=1)
    causation_id: str | None = None
    producer: str = Field(min_length=1)
    payload: dict[str, Any]

    @field_validator("occurred_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("occurred_at must carry a timezone (UTC)")
        # Checked first: a time in year 1 or 9999 cannot move to UTC (OverflowError, which
        # pydantic does not turn into a validation error).
        return within_reach(value).astimezone(UTC)

    @classmethod
    def wrap(
        cls,
        payload: EventPayload,
        *,
        producer: str,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> Envelope:
        aggregate_id = payload.aggregate_id()
        return cls(
            type=payload.event_type,
            schema_version=payload.schema_version,
            aggregate_id=aggregate_id,
            correlation_id=correlation_id or aggregate_id,
            causation_id=causation_id,
            producer=producer,
            payload=payload.model_dump(mode="json"),
        )

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Envelope:
        return cls.model_validate(json.loads(raw))
