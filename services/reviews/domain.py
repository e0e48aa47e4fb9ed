"""Review rules, free of I/O."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class ReviewRequestStatus(StrEnum):
    OPEN = "open"  # the customer may rate the visit


class ReviewRequest(BaseModel):
    """An invitation to rate a completed visit; one per booking."""

    model_config = ConfigDict(extra="forbid")

    booking_id: str
    customer_id: str
    technician_id: str
    status: ReviewRequestStatus = ReviewRequestStatus.OPEN
    opened_at: datetime
