"""A user's notifications: the list, and the live stream (server-sent events).

The stream tails MongoDB (the gateway process's one change stream, `hub.py`, fanned out
to the callers'), so a client connected to any
gateway replica hears what any replica's consumer wrote. `Last-Event-ID`
resumes after a reconnect.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from services.gateway.hub import KEEP_ALIVE, ChangeHub, with_keep_alives
from services.gateway.security import EdgeActor, live_stream
from services.gateway.storage import NOTIFICATIONS, Notification, Notifications
from shared.auth import Actor
from shared.errors import NotFound
from shared.schema import PathId
from shared.service import RuntimeDep
from shared.time import utcnow

router = APIRouter(prefix="/v1")


def recipient(actor: Actor) -> str:
    return f"{actor.role.value}:{actor.subject}"


@router.get("/notifications", tags=["notifications"], summary="My notifications, newest first")
async def list_notifications(
    runtime: RuntimeDep,
    actor: EdgeActor,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[Notification]:
    return await Notifications(runtime.db).find(
        {"recipient": recipient(actor)}, sort=[("created_at", -1)], limit=limit
    )


@router.post(
    "/notifications/{notification_id}/read", tags=["notifications"], summary="Mark as read"
)
async def mark_read(notification_id: PathId, runtime: RuntimeDep, actor: EdgeActor) -> Notification:
    notifications = Notifications(runtime.db)
    found = await notifications.get(notification_id)
    if found is None or found.recipient != recipient(actor):
        raise NotFound(f"notification {notification_id} does not exist")
    if found.read_at is None:
        found.read_at = utcnow()
        await notifications.save(found)
    return found


# What the live hub watches for the notification streams: new notifications.
WATCHED = {NOTIFICATIONS: ["insert"]}
KEYS = {NOTIFICATIONS: "recipient"}  # each notification is one recipient's


def frame(doc: Mapping[str, Any]) -> str:
    """One server-sent event; its id lets the client resume after it."""
    data = dict(doc)
    data["notification_id"] = data.pop("_id")
    note = Notification.model_validate(data)
    payload = json.dumps(note.model_dump(mode="json"))
    return f"id: {note.notification_id}\nevent: notification\ndata: {payload}\n\n"


@router.get(
    "/notifications/stream",
    tags=["notifications"],
    summary="My notifications as they happen (text/event-stream)",
    response_class=StreamingResponse,
)
async def stream(
    request: Request,
    runtime: RuntimeDep,
    actor: EdgeActor,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=200)] = None,
) -> StreamingResponse:
    me = recipient(actor)
    col = Notifications(runtime.db).col
    live: ChangeHub = request.app.state.live_hub

    async def events() -> AsyncIterator[str]:
        # Subscribed first, then what was missed is sent: nothing falls between the two.
        # Keyed by recipient, the hub hands this stream only my new notifications.
        with live.subscribe(key=(NOTIFICATIONS, me)) as changes:
            sent: set[str] = set()
            yield ": connected\n\n"
            if last_event_id:
                seen = await col.find_one({"_id": last_event_id, "recipient": me})
                if seen is not None:
                    missed = col.find(
                        {"recipient": me, "created_at": {"$gt": seen["created_at"]}}
                    ).sort("created_at", 1)
                    async for doc in missed:
                        sent.add(doc["_id"])
                        yield frame(doc)
            async for change in with_keep_alives(changes):
                if change is None:
                    yield KEEP_ALIVE
                elif change["fullDocument"]["_id"] not in sent:
                    sent.add(change["fullDocument"]["_id"])
                    yield frame(change["fullDocument"])

    return live_stream(request, actor, events())
