"""The event-loop lag watcher: a loop held by blocking work shows up in its histogram."""

from __future__ import annotations

import asyncio
import time
import uuid

from prometheus_client import REGISTRY

from shared.service import watch_loop_lag


def late_wake_ups(service: str, at_least_s: str) -> float:
    """Wake-ups later than the bucket bound `at_least_s`."""
    labels = {"service": service}
    every = REGISTRY.get_sample_value("doorstep_event_loop_lag_seconds_count", labels) or 0.0
    on_time = (
        REGISTRY.get_sample_value(
            "doorstep_event_loop_lag_seconds_bucket", {**labels, "le": at_least_s}
        )
        or 0.0
    )
    return every - on_time


async def test_a_loop_held_by_blocking_work_is_recorded_late_and_a_free_one_is_not() -> None:
    service = f"lag-{uuid.uuid4().hex[:8]}"
    watcher = asyncio.create_task(watch_loop_lag(service))
    try:
        await asyncio.sleep(0.3)  # a free loop: wake-ups on time
        assert late_wake_ups(service, "0.25") == 0
        time.sleep(0.4)  # noqa: ASYNC251 - the point: hold the loop as blocking code would
        await asyncio.sleep(0.1)
        assert late_wake_ups(service, "0.25") == 1
    finally:
        watcher.cancel()
