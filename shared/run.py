"""Run one service under uvicorn: `python -m services.<name>`."""

from __future__ import annotations

import gc

import uvicorn

from shared.settings import Settings

FULL_COLLECTION_EVERY = 100  # collections of the middle generation (Python's default: 10)


def serve(app_factory: str) -> None:
    settings = Settings()
    uvicorn.run(
        app_factory,
        factory=True,
        loop="uvloop",
        http="httptools",
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,  # our JSON logging, configured by the app factory
        access_log=False,
        timeout_graceful_shutdown=5,
    )


def freeze_startup_heap() -> None:
    """Take what start-up made (modules, the app, its schemas) out of the collector's sight.

    A full collection otherwise walks all of it each time: in the city benchmark that
    stopped a service for up to 200 ms, which is where a journey's p99 went.

    Full collections then come ten times less often (after 100 younger ones, not 10):
    in the city benchmark each still held the gateway up to about 100 ms (its live streams
    keep some 120,000 objects) and found almost nothing to free (0-580 objects in any
    service; reference counting frees the rest), so waiting longer costs no memory.
    """
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
