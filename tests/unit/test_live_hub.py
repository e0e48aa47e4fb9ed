"""The gateway's one change stream, fanned out: who hears which change.

The stream is a stand-in here (the hub's routing is the point); the notification and
dashboard tests run the real one, on a real MongoDB, through live SSE streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from services.gateway.hub import Change, ChangeHub, Subscription


class Stream:
    """What `db.watch` gives: an async context manager, iterated for changes."""

    def __init__(self, changes: asyncio.Queue[Change]) -> None:
        self.changes, self.resume_token = changes, None

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def __aiter__(self) -> AsyncIterator[Change]:
        while True:
            yield await self.changes.get()


def notification(recipient: str, n: int) -> Change:
    return {"ns": {"coll": "notifications"}, "fullDocument": {"_id": n, "recipient": recipient}}


def board_row(n: int) -> Change:
    return {"ns": {"coll": "board_bookings"}, "fullDocument": {"_id": n, "store_id": "s1"}}


def drained(sub: Subscription) -> list[Any]:
    got = []
    while not sub.queue.empty():
        change = sub.queue.get_nowait()
        assert change is not None, "the subscriber was told it fell behind"
        got.append(change["fullDocument"]["_id"])
    return got


async def next_ids(sub: Subscription, n: int) -> list[Any]:
    got: list[Any] = []
    for _ in range(n):
        change = await sub.next(quiet_s=5)
        assert change is not None, f"only {got} came within 5 s"
        got.append(change["fullDocument"]["_id"])
    return got


async def test_a_keyed_change_reaches_only_its_owners_and_the_unkeyed_subscribers() -> None:
    feed: asyncio.Queue[Change] = asyncio.Queue()

    async def open_stream(resume: Mapping[str, Any] | None) -> Stream:
        return Stream(feed)

    hub = ChangeHub("test", open_stream, keys={"notifications": "recipient"})  # type: ignore[arg-type]
    asked: list[str] = []

    def counting(who: str) -> Any:
        def accept(change: Change) -> bool:
            asked.append(who)
            return True

        return accept

    watcher = asyncio.create_task(hub.run_forever())
    try:
        with (
            hub.subscribe(counting("ana"), key=("notifications", "customer:ana")) as ana,
            hub.subscribe(counting("ana, 2nd tab"), key=("notifications", "customer:ana")) as tab,
            hub.subscribe(counting("bo"), key=("notifications", "customer:bo")) as bo,
            hub.subscribe(counting("board"), key=None) as board,
        ):
            for change in (notification("customer:ana", 1), notification("customer:bo", 2)):
                feed.put_nowait(change)
            feed.put_nowait(board_row(3))
            # The unkeyed hear everything, as before; each change is offered to all its
            # audience at once, so when the board has the last one the others have theirs.
            assert await next_ids(board, 3) == [1, 2, 3]
            assert drained(ana) == [1]
            assert drained(tab) == [1]
            assert drained(bo) == [2]
            # Nobody was asked about a change that was not theirs.
            assert sorted(asked) == sorted(["ana", "ana, 2nd tab", "bo"] + ["board"] * 3), asked
        # Closed streams leave no empty groups behind (thousands of apps come and go).
        assert hub.audience(notification("customer:ana", 4)) == []
    finally:
        watcher.cancel()


async def test_a_change_to_an_unkeyed_collection_or_without_its_owner_reaches_no_keyed_one() -> (
    None
):
    async def open_stream(resume: Mapping[str, Any] | None) -> Stream:
        return Stream(asyncio.Queue())

    hub = ChangeHub("test", open_stream, keys={"notifications": "recipient"})  # type: ignore[arg-type]
    with hub.subscribe(lambda c: True, key=("notifications", "customer:ana")):
        assert hub.audience(board_row(1)) == []
        ownerless = {"ns": {"coll": "notifications"}, "fullDocument": None}
        assert hub.audience(ownerless) == []
