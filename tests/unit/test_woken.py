"""`woken`: a loop that waits for a wake-up (the outbox relay, the timers, the city's
people) stops when it is cancelled, even just as it is woken."""

from __future__ import annotations

import asyncio

from shared.time import woken


async def test_it_says_whether_the_event_came_within_the_time() -> None:
    event = asyncio.Event()
    assert not await woken(event, 0.01)
    event.set()
    assert await woken(event, 0.01)


async def test_a_loop_cancelled_just_as_it_is_woken_stops() -> None:
    """As a stopping service does to its relay: it sets the wake (send what was handed),
    then cancels. With `asyncio.wait_for` on Python 3.11 the cancellation was lost when the
    wait had just finished, and the loop ran on for ever (the stop hung)."""

    async def relay_like(wake: asyncio.Event) -> None:
        while True:
            await woken(wake, 10)
            wake.clear()

    for _ in range(20):
        wake = asyncio.Event()
        loop = asyncio.create_task(relay_like(wake))
        await asyncio.sleep(0.001)
        wake.set()
        await asyncio.sleep(0)  # the wait inside has just finished
        loop.cancel()
        done, _ = await asyncio.wait([loop], timeout=2)
        assert done == {loop}, "the cancelled loop ran on"
        assert loop.cancelled()
