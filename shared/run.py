"""Run one service under uvicorn: `python -m services.<name>`."""

from __future__ import annotations

import uvicorn

from shared.settings import Settings


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
