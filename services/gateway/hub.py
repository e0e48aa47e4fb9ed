"""One MongoDB change stream per gateway process, fanned out to every open live stream.

A change stream per connected client would hold a database connection each (the pool is
100) and make MongoDB do the same work once per client; here one watcher reads each change
once and hands it to the subscribers whose filter accepts it. It watches from start-up, so a
stream that subscribes and then reads what it missed (Last-Event-ID, the board's snapshot)
cannot lose a change between the two; after an error it resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

from fastapi import Request
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.errors import PyMongoError

from shared.mongo import Document

log = logging.getLogger(__name__)

Change = Mapping[str, Any]
Accept = Callable[[Change], bool]
Opener = Callable[[Mapping[str, Any] | None], Awaitable[AsyncChangeStream[Document]]]
QUEUE_LIMIT = 1000  # a client this far behind is cut off; it reconnects and catches up


class Lagging(Exception):
    """The subscriber fell too far behind; it should reconnect and read what it missed."""


class Subscription:
    def __init__(self, accept: Accept) -> None:
        self.accept = accept
        self.queue: asyncio.Queue[Change | None] = asyncio.Queue(QUEUE_LIMIT)

    def offer(self, change: Change) -> None:
        if not self.accept(change):
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
            change = await asyncio.wait_for(self.queue.get(), quiet_s)
        except TimeoutError:
            return None
        if change is None:
            raise Lagging("this live stream fell behind; reconnect")
        return change


async def until_disconnected(
    request: Request, changes: Subscription, keep_alive_s: float = 15.0
) -> AsyncIterator[Change | None]:
    """The subscriber's changes while its client is connected; None when a keep-alive is due
    (a quiet connection must still carry bytes, or proxies close it)."""
    quiet_since = time.monotonic()
    while not await request.is_disconnected():
        change = await changes.next(quiet_s=1.0)
        if change is not None:
            quiet_since = time.monotonic()
            yield change
        elif time.monotonic() - quiet_since > keep_alive_s:
            quiet_since = time.monotonic()
            yield None


KEEP_ALIVE = ": keep-alive\n\n"


class ChangeHub:
    def __init__(self, name: str, open_stream: Opener) -> None:
        self.name, self._open = name, open_stream
        self._subscribers: set[Subscription] = set()
        self.watching = asyncio.Event()

    @contextlib.contextmanager
    def subscribe(self, accept: Accept) -> Iterator[Subscription]:
        sub = Subscription(accept)
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)

    async def run_forever(self) -> None:
        resume: Mapping[str, Any] | None = None
        while True:
            try:
                async with await self._open(resume) as changes:
                    self.watching.set()
                    async for change in changes:
                        resume = changes.resume_token
                        for sub in list(self._subscribers):
                            sub.offer(change)
            except PyMongoError as exc:
                log.warning("%s change stream interrupted (%s); resuming", self.name, exc)
                await asyncio.sleep(1)


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
