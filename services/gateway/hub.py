"""One MongoDB change stream per gateway process, fanned out to every open live stream.

One stream for everything live (the notifications and the board): each open change stream
costs the server work on every write to any collection, not only to the ones it watches.

A change stream per connected client would hold a database connection each (the pool is
100) and make MongoDB do the same work once per client; here one watcher reads each change
once and hands it to the subscribers whose filter accepts it. A change that is someone's own
(a notification for one recipient) goes only to the subscribers keyed by that someone: with
thousands of apps connected, each change would otherwise be tested against every one of
them (a city run of 500 open streams spent 5 % of the gateway's CPU doing just that).

It watches from start-up, so a stream that subscribes and then reads what it missed
(Last-Event-ID, the board's snapshot) cannot lose a change between the two; after an error
it resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Mapping
from typing import Any

from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.errors import PyMongoError

from shared.mongo import Database, Document

log = logging.getLogger(__name__)

Change = Mapping[str, Any]
Accept = Callable[[Change], bool]
Key = tuple[str, Any]  # (collection, the value of its documents' key field): whose change
Opener = Callable[[Mapping[str, Any] | None], Awaitable[AsyncChangeStream[Document]]]
QUEUE_LIMIT = 1000  # a client this far behind is cut off; it reconnects and catches up


class Lagging(Exception):
    """The subscriber fell too far behind; it should reconnect and read what it missed."""


class Subscription:
    def __init__(self, accept: Accept | None) -> None:
        self.accept = accept  # None: every change offered
        self.queue: asyncio.Queue[Change | None] = asyncio.Queue(QUEUE_LIMIT)

    def offer(self, change: Change) -> None:
        if self.accept is not None and not self.accept(change):
            return
        try:
            self.queue.put_nowait(change)
        except asyncio.QueueFull:
            while not self.queue.empty():  # what it has not read is lost to it anyway
                self.queue.get_nowait()
            self.queue.put_nowait(None)  # tells the reader it lost its place

    async def next(self, quiet_s: float) -> Change | None:
        """The next accepted change, or None after `quiet_s` seconds of quiet."""
        try:
            async with asyncio.timeout(quiet_s):  # no task per wait, unlike wait_for
                change = await self.queue.get()
        except TimeoutError:
            return None
        if change is None:
            raise Lagging("this live stream fell behind; reconnect")
        return change


async def with_keep_alives(
    changes: Subscription, keep_alive_s: float = 15.0
) -> AsyncIterator[Change | None]:
    """The subscriber's changes, and None when a keep-alive is due (a quiet connection must
    still carry bytes, or proxies close it). It never polls for the client going away: the
    streaming response listens for the disconnect and cancels this generator, so hundreds of
    open streams cost nothing while they are quiet."""
    while True:
        yield await changes.next(quiet_s=keep_alive_s)


KEEP_ALIVE = ": keep-alive\n\n"


class ChangeHub:
    def __init__(
        self, name: str, open_stream: Opener, keys: Mapping[str, str] | None = None
    ) -> None:
        """`keys`: collection -> the field of its documents that says whose a change is."""
        self.name, self._open = name, open_stream
        self._keys = dict(keys or {})
        self._everyone: set[Subscription] = set()
        self._by_key: dict[Key, set[Subscription]] = {}
        self.watching = asyncio.Event()

    @contextlib.contextmanager
    def subscribe(
        self, accept: Accept | None = None, key: Key | None = None
    ) -> Iterator[Subscription]:
        """Changes `accept` takes (all, without one); with `key`, only among that
        collection's changes whose document's key field has that value (others never reach
        `accept`)."""
        sub = Subscription(accept)
        group = self._everyone if key is None else self._by_key.setdefault(key, set())
        group.add(sub)
        try:
            yield sub
        finally:
            group.discard(sub)
            if key is not None and not group:
                self._by_key.pop(key, None)

    def audience(self, change: Change) -> list[Subscription]:
        """Who may want this change: every unkeyed subscriber, and those keyed by its owner."""
        listeners = list(self._everyone)
        collection = change["ns"]["coll"]
        field = self._keys.get(collection)
        if field is not None:
            owner = (change.get("fullDocument") or {}).get(field)
            listeners.extend(self._by_key.get((collection, owner), ()))
        return listeners

    async def run_forever(self) -> None:
        resume: Mapping[str, Any] | None = None
        while True:
            try:
                async with await self._open(resume) as changes:
                    self.watching.set()
                    async for change in changes:
                        resume = changes.resume_token
                        for sub in self.audience(change):
                            sub.offer(change)
            except PyMongoError as exc:
                log.warning("%s change stream interrupted (%s); resuming", self.name, exc)
                await asyncio.sleep(1)


def watching(
    db: Database, operations: Mapping[str, list[str]], keys: Mapping[str, str] | None = None
) -> ChangeHub:
    """A hub over the database's changes of these kinds to these collections (each update
    with the row as it now is): `{"notifications": ["insert"], ...}`; `keys` says whose a
    change to a collection is (`{"notifications": "recipient"}`)."""

    async def watch(resume: Mapping[str, Any] | None) -> AsyncChangeStream[Document]:
        match = {
            "$or": [
                {"ns.coll": collection, "operationType": {"$in": kinds}}
                for collection, kinds in operations.items()
            ]
        }
        return await db.watch(
            [{"$match": match}],
            full_document="updateLookup",
            resume_after=resume,
            max_await_time_ms=1000,
        )

    return ChangeHub(db.name, watch, keys)


def of(collections: Collection[str], change: Change) -> bool:
    """Is this change to one of `collections`? (Every subscriber hears the one stream.)"""
    return change["ns"]["coll"] in collections


@contextlib.asynccontextmanager
async def running(*hubs: ChangeHub) -> AsyncIterator[None]:
    """Start the hubs' watchers and wait until each watches; stop them on the way out."""
    tasks = [asyncio.create_task(hub.run_forever(), name=f"hub:{hub.name}") for hub in hubs]
    try:
        await asyncio.wait_for(asyncio.gather(*(h.watching.wait() for h in hubs)), timeout=30)
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
