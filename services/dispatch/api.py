"""Dispatch's HTTP API: technicians' files and the visit."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status
from pydantic import BaseModel, ConfigDict, Field

from services.dispatch.domain import Technician, Visit
from services.dispatch.storage import Technicians, Visits
from shared.errors import Conflict, NotFound
from shared.events.dispatch import ServiceCompleted
from shared.events.types import GeoPoint
from shared.outbox import Transaction
from shared.service import RuntimeDep
from shared.time import utcnow

router = APIRouter()

Id = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class TechnicianIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    full_name: str = Field(min_length=2, max_length=200)
    badge_number: str = Field(min_length=3, max_length=32, pattern=r"^[A-Z0-9-]+$")
    store_id: str = Field(min_length=1, max_length=64)
    skills: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(min_length=1)
    location: GeoPoint
    active: bool = True


class PerformedItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1, le=20)


class CompleteVisit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    performed: list[PerformedItem] = Field(min_length=1, max_length=20)


@router.put(
    "/technicians/{technician_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["technicians"],
    summary="Create or update a technician's file",
)
async def put_technician(technician_id: Id, body: TechnicianIn, runtime: RuntimeDep) -> Response:
    await Technicians(runtime.db).put(Technician(technician_id=technician_id, **body.model_dump()))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/technicians/{technician_id}", tags=["technicians"])
async def get_technician(technician_id: Id, runtime: RuntimeDep) -> Technician:
    tech = await Technicians(runtime.db).get(technician_id)
    if tech is None:
        raise NotFound(f"technician {technician_id} does not exist")
    return tech


@router.get("/visits/{booking_id}", tags=["visits"], summary="The visit for a booking")
async def get_visit(booking_id: Id, runtime: RuntimeDep) -> Visit:
    visit = await Visits(runtime.db).by_booking(booking_id)
    if visit is None:
        raise NotFound(f"no visit for booking {booking_id}")
    return visit


@router.post(
    "/visits/{booking_id}/complete",
    tags=["visits"],
    summary="The technician records the items performed; the receipt follows",
)
async def complete_visit(booking_id: Id, body: CompleteVisit, runtime: RuntimeDep) -> Visit:
    visits = Visits(runtime.db)

    async def complete(tx: Transaction) -> Visit:
        visit = await visits.by_booking(booking_id, tx.session)
        if visit is None:
            raise NotFound(f"no visit for booking {booking_id}")
        performed = visit.complete([(i.code, i.quantity) for i in body.performed], utcnow())
        if not await visits.save_completion(visit, tx.session):
            raise Conflict(f"visit for booking {booking_id} was completed concurrently")
        tx.emit(
            ServiceCompleted(
                booking_id=visit.booking_id,
                visit_id=visit.visit_id,
                customer_id=visit.customer_id,
                technician_id=visit.technician_id,
                completed_at=visit.completed_at or utcnow(),
                lines=performed,
            ),
            correlation_id=visit.booking_id,
        )
        return visit

    return await runtime.uow.run(complete)
