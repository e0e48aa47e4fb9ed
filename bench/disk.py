"""The disk's own pauses, measured beside the platform in the same run.

Every transaction's commit waits for MongoDB's journal to reach the disk (an fsync). On a
virtual machine the host's disk now and then holds every fsync for a few hundred ms, whatever
the guest runs: the commits of every service then finish together, late. This probe writes
4 KB beside MongoDB's files and syncs it every 50 ms, in a process of its own (the load
generator's event loop must not delay it), and logs how long each sync took. A phase then
sets its slow journeys against the stalls the disk had meanwhile.

    python -m bench.disk --file DIR/disk-probe.dat --log DIR/disk-probe.log
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

EVERY_S = 0.05
STALL_MS = 100.0  # a sync this slow holds every commit made meanwhile


@dataclass(frozen=True)
class Stall:
    at: float  # when the sync began (seconds since the epoch)
    ms: float  # how long it took

    @property
    def ends(self) -> float:
        return self.at + self.ms / 1000

    def overlaps(self, start: datetime, took_s: float) -> bool:
        """Whether the stall fell within [start, start + took_s]."""
        begin = start.timestamp()
        return self.at < begin + took_s and self.ends > begin


def samples(log: Path, start: float, end: float) -> list[tuple[float, float]]:
    """(when, ms) of every sync begun within [start, end]."""
    found = []
    with contextlib.suppress(OSError), log.open() as f:
        for line in f:
            with contextlib.suppress(ValueError):
                at, ms = (float(x) for x in line.split())
                if start <= at <= end:
                    found.append((at, ms))
    return found


def stalls(synced: list[tuple[float, float]]) -> list[Stall]:
    return [Stall(at, ms) for at, ms in synced if ms >= STALL_MS]


@contextlib.contextmanager
def probe(run_dir: Path) -> Iterator[Path]:
    """Run the probe while the block runs; yields its log."""
    log = run_dir / "disk-probe.log"
    log.unlink(missing_ok=True)
    synced = run_dir / "disk-probe.dat"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.disk", "--file", str(synced), "--log", str(log)]
    )
    try:
        yield log
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--file", type=Path, required=True, help="the file synced")
    parser.add_argument("--log", type=Path, required=True, help="where each sync is logged")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    block = b"\0" * 4096
    fd = os.open(args.file, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with args.log.open("a", buffering=1) as log:
            while True:
                began = time.time()
                os.pwrite(fd, block, 0)
                os.fsync(fd)
                log.write(f"{began:.3f} {(time.time() - began) * 1000:.2f}\n")
                time.sleep(EVERY_S)
    finally:
        os.close(fd)
        args.file.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
