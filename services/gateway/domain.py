"""Gateway rules, free of I/O: which calls may be retried, and the composed views."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


def may_retry(method: str, idempotency_key: str | None) -> bool:
    """A POST is retried only when the client made it safe with an Idempotency-Key."""
    return method.upper() in IDEMPOTENT_METHODS or bool(idempotency_key)


class ComplaintStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    complaint_id: str
    category: str
    status: str
    tier: str


class BookingView(BaseModel):
    """A booking as a client needs it in one call: the booking (with the technician's public
    identity card), its receipt's state and its complaints' states."""

    model_config = ConfigDict(extra="forbid")

    booking: dict[str, Any]
    receipt: dict[str, Any] | None
    complaints: list[ComplaintStatus] = []
