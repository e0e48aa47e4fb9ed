"""The bench's account of a phase's slowest journeys: when they were booked, the busiest
second of arrivals they usually share, and the disk stalls they waited through."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import disk
from bench.city import busiest_second, slowest
from tests.harness import ROOT

T0 = datetime(2026, 11, 24, 14, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_the_busiest_second_is_the_most_bookings_within_any_one_second_window() -> None:
    # 0.5, 0.9 and 1.4 fit in one second from 0.5; four fit from 10.2 (10.2 ... 11.1).
    moments = [at(s) for s in (0.0, 0.5, 0.9, 1.4, 3.0, 10.2, 10.5, 10.9, 11.1, 11.2 + 1e-3)]
    assert busiest_second(moments) == (4, 10.2)
    assert busiest_second(list(reversed(moments))) == (4, 10.2)  # order does not matter


def test_a_moment_a_whole_second_after_another_is_not_in_its_second() -> None:
    assert busiest_second([at(0.0), at(1.0), at(2.0)]) == (1, 0.0)
    assert busiest_second([at(5.0)]) == (1, 0.0)


def test_the_slowest_journeys_come_first_with_when_they_were_booked_and_their_hops() -> None:
    to_assigned = {
        "bk_fast": (at(0.0), 0.050),
        "bk_slow": (at(21.5), 0.612),
        "bk_mid": (at(30.0), 0.200),
    }
    hops = {"bk_slow": {"matching": 0.431, "to_gateway": 0.090}}
    lines = slowest(to_assigned, hops, count=2)
    assert lines == [
        "612 ms, requested at +21.5 s (14:00:21.500; matching 431, to_gateway 90)",
        "200 ms, requested at +30.0 s (14:00:30.000)",
    ]
    assert slowest({}, {}) == []


def test_a_slow_journey_names_the_disk_stalls_it_waited_through() -> None:
    to_assigned = {"bk_slow": (at(21.5), 0.912), "bk_after": (at(23.0), 0.300)}
    # Two stalls inside the slow journey, one before it (ended 1 s before it began), one
    # begun 10 ms before the second journey ended.
    stalls = [
        disk.Stall(at(21.6).timestamp(), 120.0),
        disk.Stall(at(21.9).timestamp(), 400.0),
        disk.Stall(at(20.0).timestamp(), 500.0),
        disk.Stall(at(23.29).timestamp(), 150.0),
    ]
    assert slowest(to_assigned, {}, stalls=stalls) == [
        "912 ms, requested at +0.0 s (14:00:21.500; through a disk stall of 120 + 400 ms)",
        "300 ms, requested at +1.5 s (14:00:23.000; through a disk stall of 150 ms)",
    ]


def test_a_stall_overlaps_a_journey_only_if_their_times_meet() -> None:
    # A sync begun at 10.0 that took 500 ms: the disk held writes from as early as the
    # probe's sync before (10.0 - 0.05) to 10.5.
    stall = disk.Stall(at(10.0).timestamp(), 500.0)
    assert stall.overlaps(at(9.0), 1.1)  # ends inside the stall
    assert stall.overlaps(at(9.0), 0.97)  # ends while the probe slept before the slow sync
    assert stall.overlaps(at(10.4), 2.0)  # begins inside it
    assert stall.overlaps(at(9.0), 5.0)  # holds it whole
    assert not stall.overlaps(at(9.0), 0.9)  # done before it can have begun
    assert not stall.overlaps(at(10.6), 1.0)  # begun after it ended


def test_the_probe_log_gives_the_syncs_of_a_window_and_its_stalls(tmp_path: Path) -> None:
    log = tmp_path / "disk-probe.log"
    log.write_text("100.000 0.40\n100.050 250.00\nnot a line\n100.400 0.30\n200.000 900.00\n")
    synced = disk.samples(log, 100.0, 150.0)
    assert synced == [(100.0, 0.4), (100.05, 250.0), (100.4, 0.3)]
    assert disk.stalls(synced) == [disk.Stall(100.05, 250.0)]
    assert disk.samples(tmp_path / "never-written.log", 0, 1e12) == []


def test_the_probe_syncs_while_the_block_runs_and_leaves_nothing_behind(tmp_path: Path) -> None:
    with disk.probe(tmp_path) as log:
        time.sleep(0.6)
        assert (tmp_path / "disk-probe.dat").exists()
    synced = disk.samples(log, 0, time.time())
    assert len(synced) >= 3, synced  # one every 50 ms, and a sync takes well under 0.6 s
    assert all(ms >= 0 for _, ms in synced)
    assert not (tmp_path / "disk-probe.dat").exists()
    time.sleep(0.2)
    assert disk.samples(log, 0, time.time()) == synced  # stopped


def test_a_probe_whose_bench_died_stops_by_itself(tmp_path: Path) -> None:
    log, synced = tmp_path / "disk-probe.log", tmp_path / "disk-probe.dat"
    # A shell starts the probe and exits at once, as a bench killed outright would leave it.
    subprocess.run(
        [
            "sh",
            "-c",
            f'"{sys.executable}" -m bench.disk --file "{synced}" --log "{log}" --parent $$ &',
        ],
        cwd=ROOT,
        check=True,
    )
    deadline = time.monotonic() + 10
    while synced.exists() or not log.exists():
        assert time.monotonic() < deadline, "the orphaned probe is still syncing"
        time.sleep(0.05)
    written = log.read_text()
    time.sleep(0.2)
    assert log.read_text() == written
