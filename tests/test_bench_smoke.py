"""The benchmark command must keep working: a quick run against the session's servers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.harness import ROOT, Infra

PAIRS = {
    "platform.outbox_relay": "raw.kafka.produce",
    "platform.unit_of_work": "raw.mongo.txn",
    "platform.consumer": "raw.mongo.txn_one_by_one",
    "platform.event_p50": "raw.kafka.e2e_p50",
    "platform.event_p99": "raw.kafka.e2e_p99",
    "platform.candidates_1000_p50": "raw.mongo.geonear_1000_p50",
    "platform.candidates_1000_p99": "raw.mongo.geonear_1000_p99",
    "platform.match_50_km": "optimum.match_50_km",
    "greedy.match_50_km": "optimum.match_50_km",
    "platform.seal_one_store_per_s": "raw.ed25519.sign_per_s",
    "platform.seal_8_stores_per_s": "raw.ed25519.sign_per_s",
    "platform.verify_receipt_us": "raw.ed25519.verify_us",
    "platform.gateway_read_p50": "direct.booking_read_p50",
    "platform.gateway_read_p99": "direct.booking_read_p99",
    "platform.notify_p50": "raw.kafka.e2e_p50",
    "platform.notify_p99": "raw.kafka.e2e_p99",
    "platform.city_3_journeys_per_s": "raw.mongo.txn",
    "platform.city_3_to_assigned_p50": "raw.kafka.e2e_p50",
    "platform.city_3_to_receipt_p99": "raw.kafka.e2e_p99",
}


def test_quick_bench_reports_every_platform_figure_next_to_its_raw_baseline(
    infra: Infra, tmp_path: Path
) -> None:
    out = tmp_path / "results.json"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": infra.kafka_bootstrap,
        "MONGODB_URI": infra.mongodb_uri,
    }
    # Its own process group: on a timeout the services the bench started die with it.
    with subprocess.Popen(
        [sys.executable, "-m", "bench.run", "--quick", "--json", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
    run = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads(out.read_text())
    figures = {f["name"]: f for f in results["figures"]}
    for platform, raw in PAIRS.items():
        assert figures[raw]["value"] > 0, run.stdout
        assert figures[platform]["value"] > 0, run.stdout
        assert figures[platform]["baseline"] == raw
        assert figures[platform]["ratio"] > 0
        assert platform in run.stdout
        assert raw in run.stdout
    assert results["machine"]["cores"] >= 1
    # Booking -> assigned hop by hop: every hop timed, from the platform's own records.
    for hop in (
        "requested_published",
        "to_dispatch",
        "matching",
        "offer_published",
        "to_gateway",
        "answered",
    ):
        assert figures[f"platform.city_3_hop_{hop}_p99"]["value"] >= 0, run.stdout
    assert figures["platform.city_3_hop_matching_p50"]["value"] > 0, run.stdout
    # MongoDB's CPU told apart by whose work it was: each service's connections by name.
    split = next(line for line in run.stdout.splitlines() if "MongoDB's CPU ms" in line)
    for service in ("gateway", "dispatch", "booking"):
        assert f" {service} " in split, split
    # The disk beside MongoDB, probed through the phase: its syncs, and the journeys no stall
    # overlapped (at most all of them).
    probed = figures["raw.disk.city_3_fsync_p99"]["value"]
    assert probed >= figures["raw.disk.city_3_fsync_p50"]["value"] > 0, run.stdout
    stalls = figures["raw.disk.city_3_stalls"]
    assert "syncs of 100 ms or more over the phase" in stalls["note"], stalls
    clear = figures.get("platform.city_3_to_assigned_clear_of_disk_stalls_p50")
    if clear is None:  # every journey waited through a stall, and the phase says so
        assert re.search(r"; (\d+) of \1 journeys to assigned waited through one", run.stdout)
    else:
        assert clear["value"] > 0, run.stdout
        assert clear["baseline"] == "raw.kafka.e2e_p50"
    assert "disk beside MongoDB, a 4 KB sync every 50 ms: p50 " in run.stdout, run.stdout
    # Where MongoDB's operations went, from its own top counters: every service's collections,
    # the outbox and inbox among them; and the platform's cost standing still.
    ops = figures["platform.city_3_mongo_ops_per_journey"]
    assert ops["value"] > 0, run.stdout
    for service in ("gateway", "dispatch", "booking", "payments"):
        assert f"{service} " in ops["note"], ops
    busiest = next(line for line in run.stdout.splitlines() if "busiest collections" in line)
    assert ".inbox " in busiest or ".outbox " in busiest, busiest
    idle = figures["platform.city_idle_cores"]
    assert 0 < idle["value"] < (os.cpu_count() or 1), run.stdout
    for server in ("kafka", "mongodb"):
        assert f"{server} " in idle["note"], idle
    loops = next(line for line in run.stdout.splitlines() if "event loops, wake-ups" in line)
    assert "events per consumer transaction: " in loops, loops
    assert "gateway" in loops, loops
    # Each rate played gets a verdict, and the shares of the sustained rate follow from it:
    # the quick run plays 3/s, then half the highest rate held (none if 3/s was lost).
    verdict = next(line for line in run.stdout.splitlines() if "fitted trend" in line)
    assert ": HELD (held)" in verdict or ": LOST (" in verdict, verdict
    if ": HELD" in verdict:
        assert "sustained: 3 journeys/s" in run.stdout, run.stdout
        sustained = figures["platform.city_sustained_journeys_per_s"]
        assert sustained["value"] == figures["platform.city_3_journeys_per_s"]["value"]
        assert "(50% of the sustained rate)" in run.stdout, run.stdout
        assert "city at 1.5 journeys/s" in run.stdout, run.stdout
        for what in ("to_assigned", "to_receipt"):
            share = figures[f"platform.city_sustained_50pct_{what}_p99"]
            assert share["value"] > 0, run.stdout
            assert share["baseline"] == "raw.kafka.e2e_p99"
    else:
        assert "sustained: no rate played was held" in run.stdout, run.stdout
        assert not any(name.startswith("platform.city_sustained") for name in figures)
    # Dispatch's rounds can never beat the optimum; greedy never either.
    assert figures["platform.match_50_km"]["ratio"] >= 0.999
    assert figures["greedy.match_50_km"]["ratio"] >= 0.999
