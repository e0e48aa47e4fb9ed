"""The live operations dashboard: the page itself (served from this package, no build step,
no request leaves the platform), the board it shows, and the board's live stream.

Operations see every store; a partner store's staff see the same page limited to their own
technicians' bookings, alerts and complaints. Actions on the page (assign, acknowledge,
respond, resolve) are the ordinary /v1 routes, checked by the services that own them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Generic, NamedTuple, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from services.gateway import board
from services.gateway.domain import (
    AlertRow,
    Board,
    BookingRow,
    ComplaintRow,
    Contacts,
    FeeRow,
    Figures,
    UnpaidRow,
    figures,
)
from services.gateway.hub import KEEP_ALIVE, ChangeHub, of, with_keep_alives
from services.gateway.security import EdgeActor, live_stream
from services.gateway.upstream import Upstream
from shared.auth import Actor
from shared.errors import NotFound, Unprocessable
from shared.mongo import Database, Document
from shared.service import RuntimeDep
from shared.time import Moment, utcnow

router = APIRouter(prefix="/v1/board", tags=["operations board"])
pages = APIRouter(include_in_schema=False)
STATIC = Path(__file__).parent / "dashboard"
ASSETS = {"board.js": "text/javascript", "board.css": "text/css", "map.js": "text/javascript"}
# The page may talk to this origin only: no fonts, scripts, tiles or beacons from elsewhere.
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@pages.get("/dashboard")
async def dashboard_page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=SECURITY_HEADERS)


@pages.get("/dashboard/{asset}")
async def dashboard_asset(asset: str) -> FileResponse:
    if asset not in ASSETS:  # a fixed list: nothing else under the package is reachable
        raise NotFound(f"no {asset!r} here")
    return FileResponse(STATIC / asset, media_type=ASSETS[asset], headers=SECURITY_HEADERS)


Since = Annotated[
    Moment | None,
    Query(description="Start of 'today' for the figures (the viewer's midnight); default UTC"),
]


def start_of_day(since: datetime | None) -> datetime:
    now = utcnow()
    if since is None:
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    return max(min(since.astimezone(UTC), now), now - timedelta(days=2))


async def contacts(client: Upstream, actor: Actor, alert: AlertRow) -> Contacts:
    """The numbers to call, asked of the services that hold them as this viewer: booking gives
    the customer's only to operations, dispatch the technician's to operations and their store."""

    async def phone(service: str, path: str) -> str | None:
        found = await client.call(service, "GET", path, headers=actor.headers())
        if found.status_code != 200:
            return None  # not this viewer's to see (or not there): no number shown
        number = found.json().get("phone")
        return str(number) if number else None

    technician_id = alert.technician.technician_id if alert.technician else None
    customer, technician = await asyncio.gather(
        phone("booking", f"/customers/{alert.customer_id}") if alert.customer_id else _none(),
        phone("dispatch", f"/technicians/{technician_id}") if technician_id else _none(),
    )
    return Contacts(customer_phone=customer, technician_phone=technician)


async def _none() -> None:
    return None


async def with_contacts(request: Request, actor: Actor, alerts: list[AlertRow]) -> list[AlertRow]:
    client: Upstream = request.app.state.upstream
    open_ones = [a for a in alerts if a.acknowledged_at is None]
    found = await asyncio.gather(*(contacts(client, actor, a) for a in open_ones))
    for alert, numbers in zip(open_ones, found, strict=True):
        alert.contacts = numbers
    return alerts


def cut_short(**lists: tuple[Sequence[object], int]) -> dict[str, int]:
    """The lists that hold more rows than they show, and how many they hold."""
    return {name: total for name, (shown, total) in lists.items() if total > len(shown)}


@router.get("", summary="The board: alerts, bookings, complaints, money owed and today's figures")
async def read_board(
    request: Request, runtime: RuntimeDep, actor: EdgeActor, since: Since = None
) -> Board:
    day = start_of_day(since)
    db = runtime.db
    rows = runtime.settings.board_rows
    read, tally = await asyncio.gather(
        asyncio.gather(*(of.read(db, actor, day, rows, None) for of in LISTS.values())),
        board.tally(db, actor, day),
    )
    listed = dict(zip(LISTS, read, strict=True))
    shown = {name: rows for name, (rows, _) in listed.items()}
    cut = cut_short(**listed)
    return Board(
        viewer=board.viewer(actor),
        at=utcnow(),
        alerts=await with_contacts(request, actor, shown["alerts"]),
        bookings=shown["bookings"],
        complaints=shown["complaints"],
        fees=shown["fees"],
        unpaid=shown["unpaid"],
        cut=cut,
        more={name: next_after(name, shown[name]) for name in cut},
        figures=figures(tally, day),  # over every row of the day, not just those shown
    )


@router.get("/figures", summary="Today's figures only (the page refreshes them after changes)")
async def read_figures(runtime: RuntimeDep, actor: EdgeActor, since: Since = None) -> Figures:
    day = start_of_day(since)
    return figures(await board.tally(runtime.db, actor, day), day)


R = TypeVar("R")


class Page(BaseModel, Generic[R]):
    """One page of a board list, in the list's own order (as `GET /v1/board` has it)."""

    model_config = ConfigDict(extra="forbid")

    rows: list[R]
    total: int = Field(description="How many rows the list holds in all")
    next_after: str | None = Field(
        description="Where the next page starts (the last row's place): pass it as `after`;"
        " null: none left"
    )


After = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=200,
        description="Where the page starts: `next_after` of the page before, or the board's"
        " `more` for the list. Rows that come or go meanwhile shift nothing",
    ),
]
Limit = Annotated[
    int | None, Query(ge=1, description="Rows at most (default and most: GATEWAY_BOARD_ROWS)")
]
Reader = Callable[[Database, Actor, datetime, int, str | None], Awaitable[tuple[list[Any], int]]]
Finisher = Callable[[Request, Actor, list[Any]], Awaitable[list[Any]]]


class ListOf(NamedTuple):
    """One of the board's lists: how it is read, where its rows live, and their id."""

    read: Reader
    collection: str
    id_field: str


LISTS = {
    "bookings": ListOf(board.bookings, board.BOARD_BOOKINGS, "booking_id"),
    "alerts": ListOf(board.alerts, board.BOARD_ALERTS, "alert_id"),
    "complaints": ListOf(board.complaints, board.BOARD_COMPLAINTS, "complaint_id"),
    "fees": ListOf(board.fees, board.BOARD_FEES, "fee_id"),
    "unpaid": ListOf(board.unpaid, board.BOARD_UNPAID, "receipt_id"),
}


def next_after(name: str, rows: Sequence[BaseModel]) -> str:
    """The cursor after a list's last row shown: its stamp in the list's order, and id."""
    of, last = LISTS[name], rows[-1]
    return board.cursor(getattr(last, board.ORDER[of.collection][0]), getattr(last, of.id_field))


def _pages(name: str, row: type[BaseModel], what: str, finish: Finisher | None = None) -> None:
    """GET /v1/board/<name>: the rest of a list the board cut short, a page at a time
    (`finish` adds to the rows what the board adds to them)."""

    async def page(
        request: Request,
        runtime: RuntimeDep,
        *,
        actor: EdgeActor,
        since: Since = None,
        after: After = None,
        limit: Limit = None,
    ) -> Any:
        most = runtime.settings.board_rows
        if limit is not None and limit > most:
            raise Unprocessable(f"limit is at most {most} rows a page", field="limit")
        size = limit or most
        # One row more than the page: whether any are left after it.
        rows, total = await LISTS[name].read(
            runtime.db, actor, start_of_day(since), size + 1, after
        )
        rows, more = rows[:size], len(rows) > size
        if finish is not None:
            rows = await finish(request, actor, rows)
        return Page[Any](
            rows=rows, total=total, next_after=next_after(name, rows) if more else None
        )

    router.add_api_route(
        f"/{name}",
        page,
        methods=["GET"],
        response_model=Page[row],  # type: ignore[valid-type]
        summary=f"A page of the board's {what}, in the board's order",
        name=f"board_{name}",
    )


_pages("bookings", BookingRow, "bookings")
_pages("alerts", AlertRow, "safety alerts", with_contacts)
_pages("complaints", ComplaintRow, "complaints")
_pages("fees", FeeRow, "late-cancellation fees (operations only)")
_pages("unpaid", UnpaidRow, "visits not paid")


class Area(BaseModel):
    model_config = ConfigDict(extra="forbid")

    region: str
    name: str
    area: dict[str, Any]


class CityMap(BaseModel):
    """What the map draws: served areas and the technicians on shift now."""

    model_config = ConfigDict(extra="forbid")

    areas: list[Area]
    technicians: list[dict[str, Any]]


@router.get("/map", summary="Served areas and technicians on shift, with their last location")
async def read_map(request: Request, actor: EdgeActor) -> CityMap:
    board.scope_of(actor)
    client: Upstream = request.app.state.upstream
    regions, on_shift = await asyncio.gather(
        client.call("booking", "GET", "/regions"),
        client.call("dispatch", "GET", "/shifts/now", headers=actor.headers()),
    )
    return CityMap(
        areas=[
            Area(region=r["region"], name=r["name"], area=r["area"])
            for r in (regions.json() if regions.status_code == 200 else [])
        ],
        technicians=on_shift.json() if on_shift.status_code == 200 else [],
    )


def _frame(kind: str, row: BaseModel) -> str:
    return f"event: {kind}\ndata: {json.dumps(row.model_dump(mode='json'))}\n\n"


# What the live hub watches for the board's streams: every row written.
WATCHED = {collection: ["insert", "update", "replace"] for collection in board.BOARD}


def in_scope(scope: dict[str, str]) -> Callable[[Mapping[str, Any]], bool]:
    """Operations hear every change; a store the changes to its rows, and the last change of
    a row that just left it (so its page drops the row). Fees carry no store: never a
    store's."""
    store = scope.get("store_id")

    def accept(change: Mapping[str, Any]) -> bool:
        doc = change.get("fullDocument")
        if doc is None or not of(WATCHED, change):
            return False
        return store is None or store in (doc.get("store_id"), doc.get("previous_store_id"))

    return accept


async def _changes(request: Request, actor: Actor, scope: dict[str, str]) -> AsyncIterator[str]:
    live: ChangeHub = request.app.state.live_hub
    with live.subscribe(in_scope(scope)) as changes:
        yield ": connected\n\n"  # the page reads the board only now: nothing falls between
        async for change in with_keep_alives(changes):
            if change is None:
                yield KEEP_ALIVE
            else:
                yield await _event(request, actor, change["ns"]["coll"], change["fullDocument"])


async def _event(request: Request, actor: Actor, collection: str, doc: Document) -> str:
    if collection == board.BOARD_BOOKINGS:
        return _frame("booking", board.booking_row(doc, actor))
    if collection == board.BOARD_ALERTS:
        alert = (await with_contacts(request, actor, [board.alert_row(doc, actor)]))[0]
        return _frame("alert", alert)
    if collection == board.BOARD_FEES:
        return _frame("fee", board.fee_row(doc))
    if collection == board.BOARD_UNPAID:
        return _frame("unpaid", board.unpaid_row(doc, actor))
    return _frame("complaint", board.complaint_row(doc, actor))


@router.get(
    "/stream",
    summary="The board's changes as they happen (text/event-stream: booking, alert, complaint, "
    "fee, unpaid)",
    response_class=StreamingResponse,
)
async def stream(request: Request, runtime: RuntimeDep, actor: EdgeActor) -> StreamingResponse:
    scope = board.scope_of(actor)
    return live_stream(request, actor, _changes(request, actor, scope))
