"""The bench's account of where MongoDB's operations went in a phase, from two readings of
the server's `top` counters: per signed journey, by collection and by service."""

from __future__ import annotations

from bench.city import Spent, by_collection, by_service

PREFIX = "doorstep_bench_city_"


def test_a_collection_counts_what_it_did_between_the_readings_per_journey() -> None:
    before = {f"{PREFIX}dispatch.visits": (100, 0.5), f"{PREFIX}booking.inbox": (40, 0.25)}
    after = {f"{PREFIX}dispatch.visits": (300, 0.75), f"{PREFIX}booking.inbox": (80, 0.375)}
    assert by_collection(before, after, PREFIX, signed=10) == [
        Spent("dispatch.visits", 20.0, 25.0),
        Spent("booking.inbox", 4.0, 12.5),
    ]


def test_a_collection_first_seen_after_the_first_reading_counts_from_nothing() -> None:
    after = {f"{PREFIX}payments.receipts": (6, 0.0125)}
    assert by_collection({}, after, PREFIX, signed=5) == [Spent("payments.receipts", 1.2, 2.5)]


def test_idle_collections_are_left_out_and_others_keep_their_own_names() -> None:
    before = {f"{PREFIX}reviews.reviews": (5, 0.0), "local.oplog.rs": (10, 0.0)}
    after = {f"{PREFIX}reviews.reviews": (5, 0.0), "local.oplog.rs": (30, 0.004)}
    # Another run's databases are not this run's services either.
    after["doorstep_bench_booking.bookings"] = (50, 0.0)
    spent = by_collection(before, after, PREFIX, signed=10)
    assert [s.collection for s in spent] == ["doorstep_bench_booking.bookings", "local.oplog.rs"]


def test_no_journey_signed_gives_nothing_rather_than_a_division_by_zero() -> None:
    assert by_collection({}, {f"{PREFIX}booking.outbox": (9, 0.1)}, PREFIX, signed=0) == []


def test_a_service_sums_its_own_collections_only() -> None:
    spent = [
        Spent("gateway.inbox", 16.0, 1.0),
        Spent("gateway.board", 14.5, 1.0),
        Spent("dispatch.visits", 21.0, 2.0),
        Spent("local.oplog.rs", 40.0, 1.0),
    ]
    assert by_service(spent, ("gateway", "dispatch", "booking")) == {
        "gateway": 30.5,
        "dispatch": 21.0,
    }
