"""Dispatch rules, free of I/O: who may be sent, and the visit's lifecycle."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import Conflict, Unprocessable
from shared.events.types import GeoPoint, PricedLine

# Until technicians carry their served areas (polygons), a technician serves this radius.
SERVICE_RADIUS_M = 30_000


class Technician(BaseModel):
    model_config = ConfigDict(extra="forbid")

    technician_id: str
    full_name: str
    badge_number: str
    store_id: str
    skills: list[str]
    location: GeoPoint
    active: bool = True


class Candidate(BaseModel):
    """A technician found near the address, with the distance to it."""

    technician: Technician
    distance_m: float


class VisitStatus(StrEnum):
    ASSIGNED = "assigned"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class Visit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    visit_id: str
    booking_id: str
    customer_id: str
    technician_id: str
    lines: list[PricedLine]
    status: VisitStatus = VisitStatus.ASSIGNED
    assigned_at: datetime
    completed_at: datetime | None = None
    performed: list[PricedLine] = Field(default_factory=list)

    def complete(self, performed: Sequence[tuple[str, int]], at: datetime) -> list[PricedLine]:
        """Record what was done. Only booked items, at booked prices: nothing else can be billed."""
        if self.status is not VisitStatus.ASSIGNED:
            raise Conflict(f"visit {self.visit_id} is already {self.status}", field="status")
        booked = {line.code: line for line in self.lines}
        done: list[PricedLine] = []
        for index, (code, quantity) in enumerate(performed):
            line = booked.get(code)
            if line is None:
                raise Unprocessable(
                    f"item {code!r} was not booked; only booked items can be recorded",
                    field=f"performed.{index}.code",
                )
            done.append(line.model_copy(update={"quantity": quantity}))
        if not done:
            raise Unprocessable("record at least one performed item", field="performed")
        self.status = VisitStatus.COMPLETED
        self.completed_at = at
        self.performed = done
        return done


def required_skills(lines: Iterable[PricedLine]) -> list[str]:
    return sorted({line.skill for line in lines if line.skill})  # products need no skill


def choose(candidates: Sequence[Candidate], skills: Iterable[str]) -> Candidate | None:
    """The nearest active technician who holds every skill (candidates come sorted by distance)."""
    needed = set(skills)
    for candidate in candidates:
        tech = candidate.technician
        if tech.active and needed <= set(tech.skills):
            return candidate
    return None


def new_visit_id() -> str:
    return f"vs_{uuid.uuid4().hex}"
