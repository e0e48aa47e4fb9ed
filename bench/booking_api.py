"""POST /bookings on a real booking service process, for the bench.

The service runs as in production (`python -m services.booking`, uvicorn) on
the bench's Kafka and MongoDB; requests go over HTTP from this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx

from shared.auth import SignedActor
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
AREA = {
    "type": "Polygon",
    "coordinates": [[[-9.35, 38.6], [-9.0, 38.6], [-9.0, 38.85], [-9.35, 38.85], [-9.35, 38.6]]],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def booking_service(settings: Settings, log: Path) -> AsyncIterator[str]:
    async with service_process("booking", settings, log) as url:
        yield url


@contextlib.asynccontextmanager
async def service_process(
    name: str,
    settings: Settings,
    log: Path,
    *,
    pids: dict[str, int] | None = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[str]:
    """A service run as in production (`python -m services.<name>`) on the bench's servers;
    yields its URL once it is ready (and notes its pid in `pids`)."""
    port = _free_port()
    env = {
        **os.environ,
        **(env or {}),
        "SERVICE_NAME": name,
        "KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "MONGODB_URI": settings.mongodb_uri,
        "DOORSTEP_TOPIC_PREFIX": settings.topic_prefix,
        "DOORSTEP_DB_PREFIX": settings.db_prefix,
        "HTTP_PORT": str(port),
        "KAFKA_GROUP_INSTANCE_ID": f"{name}-{port}",
        "LOG_LEVEL": "WARNING",
    }
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"services.{name}", cwd=ROOT, env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    if pids is not None:
        pids[name] = proc.pid
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            for _ in range(600):
                if proc.returncode is not None:
                    raise RuntimeError(f"{name} service exited; see {log}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            else:
                raise TimeoutError(f"{name} service not ready; see {log}")
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def seed(http: httpx.AsyncClient) -> dict[str, object]:
    """A region, one priced item and one customer; returns a booking request body."""
    steps = [
        http.put(
            "/regions/lisbon",
            json={
                "name": "Lisbon",
                "currency": "EUR",
                "hours": {"timezone": "Europe/Lisbon", "opens": "08:00", "closes": "20:00"},
                "area": AREA,
            },
        ),
        http.put(
            "/catalogue/items/nails.manicure",
            json={
                "kind": "service",
                "name": "Classic manicure",
                "category": "nails",
                "skill": "nails",
                "duration_minutes": 45,
            },
        ),
        http.post(
            "/catalogue/items/nails.manicure/prices",
            json={"region": "lisbon", "unit_price": 2500, "currency": "EUR"},
        ),
        http.put(
            "/customers/cus_bench",
            json={"name": "Bench", "phone": "+351912000000", "preferred_language": "pt"},
        ),
        http.put(
            "/customers/cus_bench/addresses/ad_home",
            json={
                "label": "home",
                "line": "Rua Augusta 1",
                "location": {"lat": 38.71, "lon": -9.14},
            },
        ),
    ]
    for step in steps:
        (await step).raise_for_status()
    day = date.today() + timedelta(days=2)
    start = datetime.combine(day, clock(10), ZoneInfo("Europe/Lisbon")).astimezone(UTC)
    return {
        "customer_id": "cus_bench",
        "address_id": "ad_home",
        "timing": "window",
        "window_start": start.isoformat(),
        "window_end": (start + timedelta(hours=2)).isoformat(),
        "items": [{"code": "nails.manicure", "quantity": 1}],
    }


async def http_floor(url: str, total: int) -> list[float]:
    """GET /healthz one at a time: what any request costs on this machine (HTTP, uvicorn)."""
    latencies = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for _ in range(total):
            started = time.perf_counter()
            (await http.get("/healthz")).raise_for_status()
            latencies.append(time.perf_counter() - started)
    return latencies


async def post_bookings(url: str, total: int, concurrency: int) -> tuple[list[float], float]:
    """`total` POST /bookings spread over `concurrency` clients; latencies and elapsed time."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency)
    # The caller the gateway would vouch for: operations (the seed publishes the catalogue).
    caller = {"X-Actor-Role": "ops", "X-Actor-Id": "ops_bench"}
    signed = SignedActor.from_environment()  # as the gateway signs the caller
    async with httpx.AsyncClient(
        base_url=url, timeout=30, limits=limits, headers=caller, auth=signed
    ) as http:
        body = await seed(http)
        for _ in range(20):  # warm-up: connections, caches, the first topic metadata
            (await http.post("/bookings", json=body)).raise_for_status()

        async def client(n: int) -> None:
            for _ in range(n):
                started = time.perf_counter()
                r = await http.post("/bookings", json=body)
                latencies.append(time.perf_counter() - started)
                if r.status_code != 201:
                    raise RuntimeError(f"POST /bookings answered {r.status_code}: {r.text}")

        per_client = total // concurrency
        started = time.perf_counter()
        await asyncio.gather(*(client(per_client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, elapsed
