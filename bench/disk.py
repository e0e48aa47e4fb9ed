"""The disk's own pauses, measured beside the platform in the same run.

Every transaction's commit waits for MongoDB's journal to reach the disk (an fsync). On a
virtual machine the host's disk now and then holds every fsync for a few hundred ms, whatever
the guest runs: the commits of every service then finish together, late. This probe writes
4 KB beside MongoDB's files and syncs it every 50 ms, in a process of its own (the load
generator's event loop must not delay it), and logs how long each sync took. A phase then
sets its slow journeys against the stalls the disk had meanwhile. The file lives in the
bench's run directory: beside MongoDB's files when the bench runs its own servers; measuring
servers elsewhere, it tells this machine's disk only.

    python -m bench.disk --file DIR/disk-probe.dat --log DIR/disk-probe.log [--parent PID]
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

    @property
    def since(self) -> float:
        """The earliest the disk may have stalled: it may have held writes already while the
        probe slept before this sync."""
        return self.at - EVERY_S

    def overlaps(self, start: datetime, took_s: float) -> bool:
        """Whether the stall and [start, start + took_s] overlapped."""
        begin = start.timestamp()
        return self.since < begin + took_s and self.ends > begin


def samples(log: Path, start: float, end: float) -> list[tuple[float, float]]:
    """(when, ms) of every sync begun within [start, end]."""
    found: list[tuple[float, float]] = []
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
    """Run the probe while the block runs; yields its log. The probe also stops by itself
    once the process that started it is gone (a bench killed outright)."""
    log = run_dir / "disk-probe.log"
    log.unlink(missing_ok=True)
    synced = run_dir / "disk-probe.dat"
    args = ["--file", str(synced), "--log", str(log), "--parent", str(os.getpid())]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.disk", *args], cwd=Path(__file__).resolve().parent.parent
    )
    try:
        yield log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--file", type=Path, required=True, help="the file synced")
    parser.add_argument("--log", type=Path, required=True, help="where each sync is logged")
    parser.add_argument(
        "--parent", type=int, help="stop once this process is no longer the probe's parent"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    block = b"\0" * 4096
    # Given, not read at start: the parent may be gone before the probe is up.
    parent = os.getppid() if args.parent is None else args.parent
    fd = os.open(args.file, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with args.log.open("a", buffering=1) as log:
            while os.getppid() == parent:  # orphaned: the bench died without stopping it
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
