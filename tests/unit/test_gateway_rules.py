"""Gateway rules as a specification."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, MutableMapping
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from services.gateway import handlers
from services.gateway.app import create_app
from services.gateway.board import BOARD_BOOKINGS, _place, cursor, unpaid_row
from services.gateway.domain import DayTally, figures, may_retry
from services.gateway.limits import (
    HeldStream,
    RateLimiter,
    StreamSlots,
    caller_address,
    caller_network,
    per,
)
from services.gateway.security import (
    CREDENTIAL_ENDED,
    SignInChecks,
    edge_actor,
    signin_limited,
    until,
)
from services.gateway.storage import ACCOUNTS
from services.gateway.tokens import SigningKey, VerifiedAccess, VerifiedTokens, issue_access
from shared.auth import Actor, Role
from shared.errors import TooManyRequests, Unauthenticated, Unprocessable
from shared.time import within_reach

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("method", "key", "expected"),
    [
        ("GET", None, True),
        ("put", None, True),
        ("DELETE", None, True),
        ("POST", None, False),
        ("POST", "k-12345678", True),
        ("PATCH", None, False),
    ],
)
def test_only_idempotent_calls_are_retried(method: str, key: str | None, expected: bool) -> None:
    assert may_retry(method, key) is expected


def test_a_caller_gets_its_burst_then_waits_for_the_refill_and_others_are_unaffected() -> None:
    limiter = RateLimiter(rate_per_s=2, burst=3)
    for _ in range(3):
        limiter.check("customer:a", now=100.0)
    with pytest.raises(TooManyRequests) as refused:
        limiter.check("customer:a", now=100.0)
    assert refused.value.retry_after == 1
    limiter.check("customer:b", now=100.0)  # another caller has its own bucket
    limiter.check("customer:a", now=100.5)  # half a second: one token back
    with pytest.raises(TooManyRequests):
        limiter.check("customer:a", now=100.5)


def test_a_token_given_back_after_a_success_is_not_counted_and_never_passes_the_burst() -> None:
    limiter = RateLimiter(rate_per_s=1 / 60, burst=2)
    limiter.check("staff", now=0.0)
    limiter.give_back("staff", now=0.0)  # the try succeeded: it does not count
    limiter.give_back("staff", now=0.0)  # nor can one more be given than was taken
    limiter.check("staff", now=0.0)
    limiter.check("staff", now=0.0)
    with pytest.raises(TooManyRequests) as refused:
        limiter.check("staff", now=0.0, what="too many wrong passwords")
    assert "(at most 1 a minute)" in str(refused.value)
    assert refused.value.retry_after == 60


@pytest.mark.parametrize(
    ("host", "counted_as"),
    [
        ("198.51.100.7", "198.51.100.7"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:1:2:3", "2001:db8:1:2::/64"),
        ("::ffff:198.51.100.7", "198.51.100.7"),  # an IPv4 caller on a dual-stack socket
        ("testclient", "testclient"),
        (None, "unknown"),
    ],
)
def test_an_ipv6_caller_is_counted_by_its_64_and_an_ipv4_one_by_its_address(
    host: str | None, counted_as: str
) -> None:
    assert caller_address(host) == counted_as


@pytest.mark.parametrize(
    ("host", "site"),
    [
        ("2001:db8:1:2::1", "2001:db8:1::/48"),
        ("2001:db8:1:ffff:1:2:3:4", "2001:db8:1::/48"),
        ("198.51.100.7", None),  # an IPv4 address counts alone
        ("::ffff:198.51.100.7", None),
        ("testclient", None),
        (None, None),
    ],
)
def test_an_ipv6_caller_belongs_to_its_48_and_an_ipv4_one_to_no_site(
    host: str | None, site: str | None
) -> None:
    assert caller_network(host) == site


@pytest.mark.parametrize(
    ("rate", "said"),
    [(5.0, "5 a second"), (0.5, "30 a minute"), (1 / 60, "1 a minute"), (1 / 600, "6 an hour")],
)
def test_a_rate_is_said_as_people_say_it(rate: float, said: str) -> None:
    assert per(rate) == said


# ------------------------------------------------------------ the ops board's figures --
MIDNIGHT = datetime(2026, 11, 23, tzinfo=UTC)


def test_todays_figures_are_shares_medians_and_averages_of_the_days_sums() -> None:
    # Which rows count for which figure is MongoDB's part: tests/test_board_day.py.
    tally = DayTally(
        bookings=4,
        assigned=3,
        waits_s=(600.0, 60.0, 180.0),
        completed=1,
        signed=2,
        revenue={"EUR": 4500},
        ratings=3,
        rating_sum=11,
        first_responses_s=(900.0, 100.0),
    )
    f = figures(tally, MIDNIGHT)
    assert (f.since, f.bookings, f.share_assigned) == (MIDNIGHT, 4, 0.75)
    assert f.median_time_to_assign_s == 180.0
    assert (f.visits_completed, f.receipts_signed) == (1, 2)
    assert f.revenue == {"EUR": 4500}
    assert f.average_rating == 3.67
    assert f.median_first_response_s == 500.0


def test_a_quiet_day_has_no_made_up_figures() -> None:
    f = figures(DayTally(), MIDNIGHT)
    assert (f.bookings, f.visits_completed, f.receipts_signed) == (0, 0, 0)
    assert f.share_assigned is None
    assert f.median_time_to_assign_s is None
    assert f.median_first_response_s is None
    assert f.average_rating is None
    assert f.revenue == {}


# ------------------------------------------------------------ verified tokens --
def _token(key: SigningKey, now: datetime, ttl_s: int = 60) -> str:
    actor = Actor(role=Role.CUSTOMER, subject="cu_1")
    return issue_access(key, actor, now, timedelta(seconds=ttl_s))


def test_a_remembered_token_still_needs_its_key_in_rotation_and_an_unexpired_exp() -> None:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    key = SigningKey.from_seed("k1", b"\x01" * 32)
    token = _token(key, now)
    verified = VerifiedTokens()
    assert verified.actor(token, {"k1": key.public}, now).subject == "cu_1"
    assert len(verified) == 1  # remembered: its next calls skip the signature check
    assert verified.actor(token, {"k1": key.public}, now).subject == "cu_1"
    assert len(verified) == 1
    # It stays the same caller later on...
    assert verified.actor(token, {"k1": key.public}, now + timedelta(seconds=30)).subject == "cu_1"
    # ...but only while its key is still a verifying key,
    with pytest.raises(Unauthenticated, match="key is unknown"):
        verified.actor(token, {"k2": SigningKey.from_seed("k2", b"\x02" * 32).public}, now)
    # and only until it expires.
    with pytest.raises(Unauthenticated, match="expired"):
        verified.actor(token, {"k1": key.public}, now + timedelta(seconds=61))


def test_a_token_from_a_clock_a_little_ahead_is_taken_by_our_clock_not_the_librarys() -> None:
    """Times are checked against the gateway's clock (which tests move, and which another
    replica's may lead by a little), never the machine's."""
    now = datetime.now(UTC) + timedelta(days=90)  # a moved clock: iat is "in the future"
    key = SigningKey.from_seed("k1", b"\x01" * 32)
    ahead = _token(key, now + timedelta(seconds=30))  # issued by a replica 30 s ahead
    assert VerifiedTokens().actor(ahead, {"k1": key.public}, now).subject == "cu_1"
    too_far = _token(key, now + timedelta(seconds=120))
    with pytest.raises(Unauthenticated, match="issued in the future"):
        VerifiedTokens().actor(too_far, {"k1": key.public}, now)


def test_a_token_that_fails_verification_is_never_remembered() -> None:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    key = SigningKey.from_seed("k1", b"\x01" * 32)
    forged = _token(SigningKey.from_seed("k1", b"\x03" * 32), now)  # same key id, other key
    verified = VerifiedTokens()
    for _ in range(2):
        with pytest.raises(Unauthenticated, match="not valid"):
            verified.actor(forged, {"k1": key.public}, now)


def test_the_remembered_tokens_are_bounded() -> None:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    key = SigningKey.from_seed("k1", b"\x01" * 32)
    verified = VerifiedTokens(size=3)
    tokens = [_token(key, now) for _ in range(5)]
    for token in tokens:
        verified.actor(token, {"k1": key.public}, now)
    assert len(verified) == 3


def test_the_gateway_keeps_only_the_newest_booking_owners(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "OWNERS_KEPT", 3)
    monkeypatch.setattr(handlers, "_owners", {})
    for n in range(5):
        handlers._keep_owner("db", f"bk_{n}", f"cus_{n}")
    assert handlers._owners == {("db", f"bk_{n}"): f"cus_{n}" for n in (2, 3, 4)}


def test_the_gateway_does_not_load_dispatchs_matching_libraries() -> None:
    """It imports every service's routes to offer them at the edge; numpy and scipy, which only
    dispatch's matching uses, would be about 70 MB of its memory (the bar is 200 MB)."""
    probe = "import sys, services.gateway.app; print(sorted({'numpy', 'scipy'} & set(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


async def _chunks(n: int, then: asyncio.Event | None = None) -> AsyncIterator[str]:
    for i in range(n):
        yield f"data: {i}\n\n"
    if then is not None:
        await then.wait()  # a live stream: goes on until the client leaves


async def _serve(response: HeldStream, client_leaves: asyncio.Event) -> list[bytes]:
    """The response served as uvicorn would (ASGI 2.3), to a client that stays until
    `client_leaves` is set; what it was sent."""
    sent: list[bytes] = []

    async def receive() -> dict[str, Any]:
        await client_leaves.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message.get("body", b""))

    scope = {"type": "http", "asgi": {"spec_version": "2.3"}, "method": "GET"}
    await response(scope, receive, send)
    return sent


async def test_a_principal_holds_at_most_so_many_live_streams_and_every_end_frees_one() -> None:
    slots = StreamSlots(per_principal=2)
    first, second = slots.take("customer:ana"), slots.take("customer:ana")
    with pytest.raises(TooManyRequests) as refused:
        slots.take("customer:ana")
    assert "at most 2" in str(refused.value)
    assert refused.value.retry_after == StreamSlots.RETRY_AFTER_S
    slots.take("customer:rui")  # another principal has slots of its own

    # A stream read to its end frees its slot, once however often it is released.
    sent = await _serve(HeldStream(first, _chunks(2)), asyncio.Event())
    assert b"data: 1\n\n" in sent
    first.release()
    assert slots.open_for("customer:ana") == 1
    # A live stream the client leaves frees its slot.
    leaves = asyncio.Event()
    serving = asyncio.create_task(_serve(HeldStream(second, _chunks(1, asyncio.Event())), leaves))
    await asyncio.sleep(0.05)
    assert slots.open_for("customer:ana") == 1
    leaves.set()
    await asyncio.wait_for(serving, 5)
    assert slots.open_for("customer:ana") == 0
    # So does one the client left before its first byte.
    gone = asyncio.Event()
    gone.set()
    await _serve(HeldStream(slots.take("customer:ana"), _chunks(0, asyncio.Event())), gone)
    assert slots.open_for("customer:ana") == 0


# Routes anyone may call as often as they like: static, or for the platform's own probes.
UNLIMITED_ROUTES = {
    "/dashboard",  # the page and its assets: files, no database
    "/dashboard/{asset}",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/dev/sms",  # development only (404 unless DOORSTEP_DEV_SMS_LOG is set)
}


def _routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    for route in routes:
        if hasattr(route, "original_router"):  # a router included in the app
            included = prefix + route.include_context.prefix
            yield from _routes(route.original_router.routes, included)
        elif isinstance(route, APIRoute):
            yield prefix + route.path, route


def _dependencies(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _dependencies(sub)


def test_every_gateway_route_is_rate_limited_per_caller_or_address_or_known_to_be_free() -> None:
    free, found = [], set()
    for path, route in _routes(create_app().router.routes):
        found.add(path)
        calls = set(_dependencies(route.dependant))
        if not calls & {edge_actor, signin_limited} and path not in UNLIMITED_ROUTES:
            free.append(f"{sorted(route.methods or ())} {path}")
    assert free == []
    assert {"/v1/auth/logout", "/v1/auth/keys", "/v1/notifications/stream"} <= found


def test_a_store_sees_its_visit_unpaid_but_not_whose_nor_what_the_bank_said() -> None:
    declined = {
        "_id": "rc_1",
        "booking_id": "bk_1",
        "customer_id": "cus_ana",
        "store_id": "store_chiado",
        "amount": 6000,
        "currency": "EUR",
        "way": "card",
        "status": "due",
        "note": "insufficient funds",
        "declined_because": "insufficient funds",
    }
    ops = unpaid_row(declined, Actor(role=Role.OPS, subject="ops_1"))
    assert (ops.note, ops.customer_id) == ("insufficient funds", "cus_ana")
    store = Actor(role=Role.STORE, subject="s@x", store_id="store_chiado")
    theirs = unpaid_row(declined, store)
    assert (theirs.note, theirs.customer_id) == ("the customer's card was declined", None)
    assert "insufficient" not in theirs.model_dump_json()
    # A note written since (operations wrote it off) is the store's to read.
    written_off = {**declined, "status": "written_off", "note": "written off by operations"}
    assert unpaid_row(written_off, store).note == "written off by operations"


async def test_a_staff_stream_ends_once_the_account_says_its_sign_in_is_over() -> None:
    """A live stream is asked whether its staff member is still signed in once `recheck_s`
    has passed, at the next frame (keep-alives come that often), and ends with the event
    that sends the page to refresh its token."""
    answers = iter([True, False])
    asked: list[int] = []

    async def still_signed_in() -> bool:
        asked.append(len(asked))
        return next(answers)

    async def frames() -> AsyncIterator[str]:
        for n in range(100):
            await asyncio.sleep(0.01)
            yield f"data: {n}\n\n"

    seen = [f async for f in until(frames(), 60.0, still_signed_in, recheck_s=0.1)]

    assert seen[-1] == CREDENTIAL_ENDED
    assert len(asked) == 2  # not at every frame
    assert 2 <= len(seen) - 1 < 100  # frames went on past the first check, then stopped
    ended = [f async for f in until(frames(), 60.0, None, recheck_s=0.01)]
    assert len(ended) == 100  # no check without one
    assert CREDENTIAL_ENDED not in ended


class _Accounts:
    """The accounts collection as far as a sign-in check reads it: one technician's
    account, and a gate that holds a read until the test lets it finish."""

    def __init__(self, sign_ins: str | None) -> None:
        self.account: dict[str, Any] | None = {"_id": "+351910000001", "sign_ins": sign_ins}
        self.reads = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def find_one(self, _query: Any, projection: Any = None) -> dict[str, Any] | None:
        self.reads += 1
        account = self.account
        await self.gate.wait()
        return account


def _technician_access(sign_ins: str | None) -> VerifiedAccess:
    return VerifiedAccess(Actor(role=Role.TECHNICIAN, subject="tech_1"), "k1", 2**40, sign_ins)


async def test_a_technicians_sign_ins_are_read_once_a_recheck_and_again_once_forgotten() -> None:
    accounts = _Accounts("s1")
    db: Any = {ACCOUNTS: accounts}
    checks = SignInChecks(technician_s=60.0)
    token = _technician_access("s1")

    assert await checks.standing(db, token)
    assert await checks.standing(db, token)
    assert accounts.reads == 1  # a busy technician app costs one read a minute, not one a call

    # A new phone registered through another replica: its token does not match what this
    # one remembers, and is read afresh rather than refused.
    accounts.account = {"sign_ins": "s2"}
    assert await checks.standing(db, _technician_access("s2"))
    assert accounts.reads == 2
    assert not await checks.standing(db, token)  # the old phone's, refused once read
    assert accounts.reads == 3

    accounts.account = None  # taken back, by this gateway: it forgets at once
    checks.forget("tech_1")
    assert not await checks.standing(db, _technician_access("s2"))
    assert accounts.reads == 4

    # A read under way when the sign-in is taken back is not remembered: the next call
    # reads again rather than trust what it saw before.
    accounts.account = {"sign_ins": "s1"}
    checks.forget("tech_1")
    accounts.gate.clear()
    reading = asyncio.create_task(checks.standing(db, token))
    await asyncio.sleep(0)
    accounts.account = None
    checks.forget("tech_1")
    accounts.gate.set()
    assert await reading  # what it read, before
    assert not await checks.standing(db, token)
    assert accounts.reads == 6

    every_call = SignInChecks(technician_s=0.0)
    accounts.account = {"sign_ins": "s1"}
    for _ in range(3):
        assert await every_call.standing(db, token)
    assert accounts.reads == 9

    few = SignInChecks(technician_s=60.0, size=2)
    for n in range(3):  # three technicians: the first one read is let go of
        await few.standing(
            db, VerifiedAccess(Actor(role=Role.TECHNICIAN, subject=f"t{n}"), "k1", 2**40, "s1")
        )
    assert accounts.reads == 12
    await few.standing(
        db, VerifiedAccess(Actor(role=Role.TECHNICIAN, subject="t2"), "k1", 2**40, "s1")
    )
    assert accounts.reads == 12  # still remembered
    await few.standing(
        db, VerifiedAccess(Actor(role=Role.TECHNICIAN, subject="t0"), "k1", 2**40, "s1")
    )
    assert accounts.reads == 13  # let go of, so read again


def test_a_board_cursor_or_day_at_the_ends_of_the_calendar_is_refused_clearly() -> None:
    """A forged cursor naming year 1 reached the database query, which could not store the
    time: a 500. Every time a caller sends falls between 1970 and 2999."""
    forged = cursor(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))), "bk_1")
    with pytest.raises(Unprocessable) as refused:
        _place(BOARD_BOOKINGS, forged)
    assert refused.value.field == "after"
    fine = cursor(datetime(2026, 11, 25, tzinfo=UTC), "bk_1")
    assert _place(BOARD_BOOKINGS, fine)["_id"] == "bk_1"
    for year in (1, 1969, 3000, 9999):
        with pytest.raises(ValueError, match="between the years 1970 and 2999"):
            within_reach(datetime(year, 6, 1, tzinfo=UTC))
