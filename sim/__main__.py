"""`python -m sim --gateway URL --ops-email E --ops-password-file F [--rate R --seed S ...]`"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import statistics
import sys
import time
from pathlib import Path

import uvloop

from shared.run import freeze_startup_heap
from sim.city import City, CityPlan


def parse(argv: list[str] | None) -> CityPlan:
    p = argparse.ArgumentParser(prog="sim", description="Play a living city through the gateway.")
    p.add_argument("--gateway", default="http://127.0.0.1:8000")
    p.add_argument("--ops-email", default="ops@doorstep.local")
    p.add_argument("--ops-password-file", type=Path, required=True)
    p.add_argument("--rate", type=float, default=0.5, help="journeys started per second")
    p.add_argument("--seed", type=int, default=7, help="the same seed plays the same city")
    p.add_argument("--customers", type=int, default=40)
    p.add_argument("--technicians", type=int, default=16)
    p.add_argument("--stores", type=int, default=4)
    p.add_argument("--journeys", type=int, default=0, help="stop after this many (0: no limit)")
    p.add_argument("--duration", type=float, default=0.0, help="seconds (0: until stopped)")
    p.add_argument("--pace", type=float, default=1.0, help="scale of travel and work times")
    a = p.parse_args(argv)
    return CityPlan(
        gateway=a.gateway,
        ops_email=a.ops_email,
        ops_password=a.ops_password_file.read_text().strip(),
        rate=a.rate,
        seed=a.seed,
        customers=a.customers,
        technicians=a.technicians,
        stores=a.stores,
        journeys=a.journeys,
        duration_s=a.duration,
        pace=a.pace,
    )


async def main(plan: CityPlan) -> int:
    city = City(plan)
    freeze_startup_heap()  # the simulator is a client with a latency to keep, too
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, lambda: setattr(city, "running", False))

    async def report() -> None:
        while True:
            await asyncio.sleep(10)
            logging.info("%s", city.outcomes.line())

    t0, reporter = time.monotonic(), asyncio.create_task(report())
    try:
        outcomes = await city.run()
    finally:
        reporter.cancel()
    took = time.monotonic() - t0
    waits = outcomes.to_assigned_ms
    print(
        f"[sim] {took:.0f} s: {outcomes.line()}; booking to assigned p50 "
        f"{statistics.median(waits) if waits else float('nan'):.0f} ms"
    )
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sys.exit(uvloop.run(main(parse(sys.argv[1:]))))
