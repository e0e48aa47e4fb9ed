"""A living city played through the public gateway, as real clients would.

Stores (API keys from operations) put their technicians on the platform and sell prepaid
packages; technicians sign in by phone, answer offers (sometimes no), drive over reporting
where they are, check in at the door, type the customer's code (sometimes wrongly) and
complete the visit, and collect the cash from customers who have no card on file;
customers sign in by phone, book, sometimes cancel or reschedule, give their code at the
door (rarely: "this is not the person"), sign the receipt, review, and sometimes complain,
then answer the resolution operations propose (`sim/desk.py`, which also takes the safety
alerts). Rate, seed and size are parameters; the same seed plays the same city.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from deploy.local.demo_data import (
    BOUNDS,
    CATALOGUE,
    REGION,
    item_body,
    price_body,
    region_body,
)
from deploy.local.demo_data import technician_file as demo_file
from shared.time import woken
from sim.client import UNREACHABLE, Answer, Caller, Refused, session
from sim.desk import DESK_EVERY_S, Desk

log = logging.getLogger("sim")
SKILLS = sorted({skill for (_, _, _, skill, *_) in CATALOGUE.values() if skill})
SERVICES = {skill: [c for c, v in CATALOGUE.items() if v[3] == skill] for skill in SKILLS}
ROUND_THE_CLOCK = [{"weekday": d, "start": "00:00", "end": "00:00"} for d in range(7)]
# How often an app looks by itself between pushes, on average. Pushes carry a journey: an
# app also looks whenever its live stream (re)connects, so a push missed meanwhile is caught
# up at once.
LOOK_EVERY_S = 30.0
# Each wait is drawn from LOOK_EVERY_S times this range. Phones do not look in step; apps
# started together and waiting exactly 30 s did: every 30 s the city's idle technicians
# (200 in the bench) all asked for their offers in the same moment, and the journeys
# booked in that moment were the slowest of their phase.
LOOK_SPREAD = (0.5, 1.5)
DONE = ("completed", "receipt_signed", "closed")
ACTIVE = ("assigned", "en_route", "arrived", "identity_confirmed", "in_service")


@dataclass(frozen=True)
class Shares:
    """How often people do the less usual things (probabilities per journey or offer)."""

    decline: float = 0.08
    wrong_code: float = 0.1
    not_the_person: float = 0.01
    far_check_in: float = 0.02
    cancel: float = 0.04
    reschedule: float = 0.04
    review: float = 0.6
    complaint: float = 0.05
    prepaid: float = 0.2
    cash: float = 0.1  # customers with no card on file: they pay the technician in cash
    # Customers whose card on file is declined: told so, they pay with another in the app.
    declined: float = 0.05
    # Complaints whose first resolution the customer turns down (the next tier's they take).
    reject_resolution: float = 0.2
    # Visits where the technician records one more than they did: the customer, who booked
    # one, takes it off the receipt before signing.
    over_record: float = 0.03
    # Customers who took something off the receipt complain more often than the rest.
    complaint_after_dispute: float = 0.3


@dataclass(frozen=True)
class CityPlan:
    gateway: str
    ops_email: str
    ops_password: str
    rate: float = 0.5  # journeys started per second
    seed: int = 7
    customers: int = 40
    technicians: int = 16
    stores: int = 4
    journeys: int = 0  # stop after this many (0: until the duration ends or forever)
    duration_s: float = 0.0
    pace: float = 1.0  # seconds of the technician's travel and work, scaled
    timeout_s: float = 30.0  # an app gives up on a call after this long (and tries again)
    shares: Shares = field(default_factory=Shares)
    # Which people (0-99): the same number, the same customers, technicians and stores every
    # run, with what earlier runs left them (cards, prepaid packages); another, other people.
    population: int = 0
    desk_every_s: float = DESK_EVERY_S  # how often operations look at alerts and complaints


@dataclass
class Outcomes:
    """What the city saw: counts of each ending, and the waits that matter."""

    counts: Counter[str] = field(default_factory=Counter)
    booked: list[str] = field(default_factory=list)  # every booking made
    # Bookings made with the store whose package the customer holds: it pays for them.
    booked_with: dict[str, str] = field(default_factory=dict)
    signed: list[str] = field(default_factory=list)  # bookings whose receipt was signed
    signed_at: list[float] = field(default_factory=list)  # when (monotonic seconds)
    took_s: list[float] = field(default_factory=list)  # booking to signature, per journey
    to_assigned_ms: list[float] = field(default_factory=list)
    complained: list[str] = field(default_factory=list)  # bookings with a complaint filed
    complaints: list[str] = field(default_factory=list)  # the complaints filed

    def line(self) -> str:
        c = self.counts
        keys = (
            "started",
            "assigned",
            "completed",
            "signed",
            "cancelled",
            "cash",
            "paid_after_decline",
            "halted",
            "dispatch_failed",
            "unassigned",
            "unfinished",
            "errors",
        )
        return " ".join(f"{k}={c[k]}" for k in keys)


@dataclass
class Technician:
    caller: Caller
    technician_id: str
    store_id: str
    skill: str
    home: tuple[float, float]
    store: Caller  # their store's API key: it keeps their file
    file: dict[str, Any]
    nudged: asyncio.Event = field(default_factory=asyncio.Event)  # an offer was pushed
    working: set[str] = field(default_factory=set)  # bookings whose visit is under way here
    looks: int = 0
    resume: bool = False  # a visit was given up half-way: look at the job list again soon
    # Cash to collect, pushed as the customer signs: receipt -> (amount, booking, the
    # notification).
    cash_due: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    catch_up: bool = False  # the stream (re)connected: a push may have been missed

    def owed(self, note: dict[str, Any]) -> None:
        """A "cash_due" notification: what to collect, and for which visit."""
        data = note["data"]
        self.cash_due[data["receipt_id"]] = (
            data["amount"],
            note["booking_id"],
            note["notification_id"],
        )


@dataclass
class Customer:
    caller: Caller
    customer_id: str
    location: tuple[float, float]
    pays_cash: bool = False  # no card on file
    card_declined: bool = False  # its issuer declines the card on file, every time
    prepaid_at: str | None = None  # the store whose package they bought (maybe used up)
    busy: bool = False
    nudged: asyncio.Event = field(default_factory=asyncio.Event)  # a notification arrived
    receipt_ready: asyncio.Event = field(default_factory=asyncio.Event)  # that one was pushed


# Private networks the city's people call from: each phone its own address.
CUSTOMERS_NET, TECHNICIANS_NET = 1, 2


def home_network(net: int, i: int) -> str:
    return f"10.{net}.{i // 256 % 256}.{i % 256}"


def arrival_moments(rng: random.Random, rate: float, duration_s: float) -> list[float]:
    """Exactly `rate` x `duration_s` arrivals, at uniformly random moments of the window, in
    order: a Poisson process given its count."""
    return sorted(rng.uniform(0, duration_s) for _ in range(round(rate * duration_s)))


class CityStopped(Exception):
    """The city stopped while someone waited: their journey ends unfinished, nobody's fault."""


class City:
    def __init__(self, plan: CityPlan) -> None:
        self.plan = plan
        # Everyone's calls share one pool; the live streams, open for the whole run, have
        # their own, with no time limit but a quiet one (keep-alives come every 15 s).
        self.http = session(plan.gateway, aiohttp.ClientTimeout(total=plan.timeout_s))
        self.streams = session(
            plan.gateway, aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=60.0)
        )
        self.rng = random.Random(plan.seed)
        self.arrivals = random.Random(plan.seed + 1)  # when people book, apart from what they do
        self.looks = random.Random(plan.seed + 2)  # when idle apps look, apart from both
        self.wallets = random.Random(plan.seed + 3)  # who has a card, apart from all three
        self.ops = Caller(self.http)
        self.desk = Desk(self.ops, self.outcomes_count, plan.desk_every_s)
        self.technicians: list[Technician] = []
        self.customers: list[Customer] = []
        self.customer_of: dict[str, Customer] = {}  # booking -> who is at home
        self.outcomes = Outcomes()
        self.running = True
        self.journeys: set[asyncio.Task[None]] = set()
        self.visits: set[asyncio.Task[None]] = set()
        self.workers: list[asyncio.Task[None]] = []
        # The same people every run of a population; the seed decides what they do.
        self.tag = "sim" if plan.population == 0 else f"sim{plan.population}"
        self._halted: set[str] = set()  # visits the customer stopped at the door
        self._cash_handed: dict[str, asyncio.Event] = {}  # booking -> its cash was recorded
        self._cash_counted: set[str] = set()  # receipts whose cash was counted

    # ------------------------------------------------------------------- setup --
    def point(self) -> tuple[float, float]:
        """Somewhere in the central third of the served area (lat, lon)."""
        west, south, east, north = BOUNDS
        third_lat, third_lon = (north - south) / 3, (east - west) / 3
        return (
            round(self.rng.uniform(south + third_lat, north - third_lat), 5),
            round(self.rng.uniform(west + third_lon, east - third_lon), 5),
        )

    async def setup(self) -> None:
        plan = self.plan
        await self.ops.sign_in_as_staff(plan.ops_email, plan.ops_password)
        # The city's region and price list, where they are missing (never redefined).
        regions = await self.ops.json("GET", "/v1/regions")
        if not any(r["region"] == REGION for r in regions):
            await self.ops.call("PUT", f"/v1/regions/{REGION}", json=region_body())
        for code in CATALOGUE:
            found = await self.ops.call("GET", f"/v1/catalogue/items/{code}", ok=(200, 404))
            if found.status_code == 404:
                await self.ops.call("PUT", f"/v1/catalogue/items/{code}", json=item_body(code))
            item = await self.ops.json("GET", f"/v1/catalogue/items/{code}")
            if not any(p["region"] == REGION for p in item["prices"]):
                await self.ops.call(
                    "POST", f"/v1/catalogue/items/{code}/prices", json=price_body(code)
                )
        stores = [f"{self.tag}_store_{i}" for i in range(plan.stores)]
        keys: dict[str, Caller] = {}
        for store in stores:
            made = await self.ops.json(
                "POST", f"/v1/stores/{store}/api-keys", json={"scopes": ["read", "write"]}
            )
            keys[store] = Caller(self.http, api_key=made["api_key"])
        for i in range(plan.technicians):
            store, skill = stores[i % len(stores)], SKILLS[i % len(SKILLS)]
            tech_id, badge = f"{self.tag}_tech_{i}", f"{self.tag.upper()}-{i:04d}"
            lat, lon = self.point()
            body = demo_file((tech_id, f"Technician {i}", badge, store, [skill], lat, lon))
            body["shifts"] = ROUND_THE_CLOCK  # the city lives at any hour
            body["phone"] = phone = f"+35196{plan.population:02d}{i:05d}"
            await keys[store].call("PUT", f"/v1/technicians/{tech_id}", json=body)
            registered = await keys[store].json(
                "POST",
                "/v1/technician-accounts",
                json={"technician_id": tech_id, "phone": phone, "store_id": store},
            )
            caller = Caller(self.http, address=home_network(TECHNICIANS_NET, i))
            # The store hands the enrolment code over with the work card (none when the
            # technician signed in on this phone in an earlier run).
            await caller.sign_in_by_phone(phone, registered["enrolment_code"])
            self.technicians.append(
                Technician(caller, tech_id, store, skill, (lat, lon), keys[store], body)
            )
        for store in stores:  # a package of 5 visits of the store's services
            skills = {t.skill for t in self.technicians if t.store_id == store}
            covers = [c for s in skills for c in SERVICES[s]]
            await keys[store].call(
                "PUT",
                f"/v1/plans/{store}_five",
                json={
                    "store_id": store,
                    "name": "Five visits",
                    "kind": "package",
                    "price": 9000,
                    "currency": "EUR",
                    "visits": 5,
                    "covers": covers,
                },
            )
        for i in range(plan.customers):
            caller = Caller(self.http, address=home_network(CUSTOMERS_NET, i))
            await caller.sign_in_by_phone(f"+35192{plan.population:02d}{i:05d}")
            me, (lat, lon) = caller.subject, self.point()
            await caller.call(
                "PUT",
                f"/v1/customers/{me}",
                json={
                    "name": f"Customer {i}",
                    "phone": f"+35192{plan.seed % 100:02d}{i:05d}",
                    "preferred_language": "pt",
                },
            )
            await caller.call(
                "PUT",
                f"/v1/customers/{me}/addresses/home",
                json={"label": "home", "line": f"Rua {i}", "location": {"lat": lat, "lon": lon}},
            )
            # The same people every run: one who pays cash this time removes a card kept
            # from a run before. (One draw decides both, so the cash share picks the same
            # people whatever the declined share.)
            wallet = self.wallets.random()
            pays_cash = wallet < plan.shares.cash
            card_declined = not pays_cash and wallet < plan.shares.cash + plan.shares.declined
            if pays_cash:
                await caller.call("DELETE", f"/v1/customers/{me}/payment-method")
            else:
                await caller.call(
                    "PUT",
                    f"/v1/customers/{me}/payment-method",
                    json={"payment_method": "pm_card_declined" if card_declined else "pm_card_ok"},
                )
            prepaid_at = None
            if self.rng.random() < plan.shares.prepaid:
                store = prepaid_at = self.rng.choice(stores)
                await keys[store].call(
                    "POST",
                    "/v1/holdings",
                    json={"plan_id": f"{store}_five", "customer_id": me},
                    headers={"Idempotency-Key": f"{self.tag}-{store}-{me}"},
                )
            self.customers.append(
                Customer(caller, me, (lat, lon), pays_cash, card_declined, prepaid_at)
            )
        log.info(
            "city ready: %d stores, %d technicians, %d customers",
            len(stores),
            len(self.technicians),
            len(self.customers),
        )

    # -------------------------------------------------------------------- play --
    async def run(self) -> Outcomes:
        """Set the city up, play it at the plan's rate, stop it."""
        try:
            await self.start()
            return await self.play(self.plan.rate, self.plan.duration_s, self.plan.journeys)
        finally:
            await self.stop()

    async def start(self) -> None:
        await self.setup()
        self.workers = [asyncio.create_task(self.technician(t)) for t in self.technicians]
        self.workers += [
            asyncio.create_task(self.listen(c.caller, c.nudged, receipt_ready=c.receipt_ready))
            for c in self.customers
        ]
        self.workers.append(asyncio.create_task(self.desk.run(lambda: self.running)))

    def outcomes_count(self, what: str) -> None:
        self.outcomes.counts[what] += 1  # `play` starts new outcomes: counted in the current

    async def play(
        self, rate: float, duration_s: float = 0.0, journeys: int = 0, drain_s: float = 300.0
    ) -> Outcomes:
        """Start journeys at `rate` a second (Poisson arrivals) until `duration_s` or
        `journeys`, then give those under way `drain_s` to end; what they saw.

        With `duration_s` alone, exactly `rate` x `duration_s` journeys start
        (`arrival_moments`). A minute of plain Poisson arrivals at 4.5/s starts 270 +- 33
        journeys (two standard deviations), so a phase would not offer the rate it names;
        bursts within the window stay as random.
        """
        self.outcomes = Outcomes()
        started, t0 = 0, time.monotonic()
        moments: Iterator[float] | None = None
        if duration_s and not journeys:
            moments = iter(arrival_moments(self.arrivals, rate, duration_s))
        while self.running:
            if journeys and started >= journeys:
                break
            if moments is not None:
                at = next(moments, None)
                if at is None:
                    break
                # Due at its moment whatever came before: people do not wait for the platform.
                await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
                if not self.running:
                    break
            elif duration_s and time.monotonic() - t0 > duration_s:
                break
            free = [c for c in self.customers if not c.busy]
            if free:
                task = asyncio.create_task(self.journey(self.rng.choice(free)))
                self.journeys.add(task)
                task.add_done_callback(self.journeys.discard)
                started += 1
            else:
                self.outcomes.counts["no_free_customer"] += 1
            if moments is None:
                await asyncio.sleep(self.arrivals.expovariate(rate))
        if self.journeys:  # let the journeys under way end
            _, late = await asyncio.wait(list(self.journeys), timeout=drain_s)
            self.outcomes.counts["unfinished"] += len(late)
            for task in late:
                task.cancel()
        return self.outcomes

    async def stop(self) -> None:
        self.running = False
        for w in self.workers:
            w.cancel()
        for v in list(self.visits):
            v.cancel()
        await asyncio.gather(*self.workers, *self.visits, return_exceptions=True)
        if self.ops.access:  # the shift ends with the queue cleared: the last alerts taken
            try:
                await asyncio.wait_for(self.desk.look(), timeout=30)
            except (Refused, *UNREACHABLE) as exc:
                log.warning("operations desk, last look: %r", exc)
        await self.streams.close()
        await self.off_duty()
        await self.http.close()

    async def off_duty(self) -> None:
        """Nobody plays the technicians once the city stops: their stores take them off shift,
        so no real booking waits on an offer no one will answer."""
        for t in self.technicians:
            try:
                await t.store.call(
                    "PUT", f"/v1/technicians/{t.technician_id}", json={**t.file, "shifts": []}
                )
            except (Refused, *UNREACHABLE) as exc:
                log.warning("could not take %s off shift: %s", t.technician_id, exc)

    async def journey(self, customer: Customer) -> None:
        customer.busy = True
        counts = self.outcomes.counts
        try:
            await self._journey(customer)
        except CityStopped:
            counts["unfinished"] += 1
        except Refused as exc:
            counts["errors"] += 1
            log.warning("journey of %s: %s", customer.customer_id, exc)
        except UNREACHABLE as exc:
            counts["errors"] += 1
            log.warning("journey of %s: %r", customer.customer_id, exc)
        finally:
            customer.busy = False

    async def paid_ahead(self, customer: Customer, code: str) -> str | None:
        """As the app does for someone who bought a package: the store whose package still
        covers this service, booked with so that it pays (its technicians only)."""
        if customer.prepaid_at is None:
            return None
        held = await customer.caller.json(
            "GET", "/v1/holdings", params={"customer_id": customer.customer_id}
        )
        for view in held:
            covers = view["holding"]["covers"]
            if view["spendable"] > 0 and (not covers or code in covers):
                return str(view["holding"]["store_id"])
        return None

    async def book(self, customer: Customer) -> str:
        """A service of the catalogue, as soon as possible at home: the new booking's id."""
        code = self.rng.choice(list(CATALOGUE))
        while CATALOGUE[code][0] != "service":
            code = self.rng.choice(list(CATALOGUE))
        store = await self.paid_ahead(customer, code)
        made = await customer.caller.json(
            "POST",
            "/v1/bookings",
            json={
                "customer_id": customer.customer_id,
                "address_id": "home",
                "timing": "asap",
                "items": [{"code": code, "quantity": 1}],
                **({"store_id": store} if store else {}),
            },
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        booking_id = str(made["booking_id"])
        self.customer_of[booking_id] = customer
        self.outcomes.booked.append(booking_id)
        if store:
            self.outcomes.booked_with[booking_id] = store
        return booking_id

    async def _journey(self, customer: Customer) -> None:
        shares, counts, me = self.plan.shares, self.outcomes.counts, customer.caller
        booking_id = await self.book(customer)
        booked_at = time.monotonic()
        counts["started"] += 1
        if self.rng.random() < shares.cancel:
            await asyncio.sleep(self.rng.uniform(0, 1))
            r = await me.call("POST", f"/v1/bookings/{booking_id}/cancel", ok=(200, 409))
            if r.status_code == 200:
                counts["cancelled"] += 1
                return
            # A 409 is "too late to cancel", or "cancelled already" when a first try that
            # timed out (a 504 while MongoDB restarts) did land: the booking's status tells.
        # An offer nobody answers waits for its deadline before the next technician is asked.
        # A quick technician may be done before the app looks: any later state counts.
        status = await self.wait_for(
            me, booking_id, {*ACTIVE, *DONE, "dispatch_failed", "cancelled"}, 300
        )
        if status == "cancelled":  # that earlier try, or operations, or the store
            counts["cancelled"] += 1
            return
        if status == "dispatch_failed" or status is None:
            counts["dispatch_failed" if status else "unassigned"] += 1
            if status is None:
                log.warning("booking %s: no technician within 5 min", booking_id)
            return
        counts["assigned"] += 1
        self.outcomes.to_assigned_ms.append((time.monotonic() - booked_at) * 1000)
        if self.rng.random() < shares.reschedule and status == "assigned":
            start = datetime.now(UTC) + timedelta(hours=self.rng.randint(2, 6))
            await me.call(
                "POST",
                f"/v1/bookings/{booking_id}/reschedule",
                json={
                    "window_start": start.isoformat(),
                    "window_end": (start + timedelta(hours=2)).isoformat(),
                },
                ok=(200, 409, 422),
            )
            counts["rescheduled"] += 1
        # The receipt is pushed once the visit is complete: that is what the app waits for.
        receipt = await self.receipt(me, booking_id, within_s=180)
        if receipt is None:
            counts["halted" if self.halted(booking_id) else "errors"] += 1
            return
        counts["completed"] += 1
        receipt = await self.take_off_what_was_not_done(customer, receipt)
        due = await self.sign(customer, booking_id, receipt)
        counts["signed"] += 1
        self.outcomes.signed.append(booking_id)
        self.outcomes.signed_at.append(time.monotonic())
        self.outcomes.took_s.append(time.monotonic() - booked_at)
        await self.pay(customer, booking_id, receipt["receipt_id"], due)
        if self.rng.random() < shares.review:
            await self.review(me, booking_id)
        disputed = bool(receipt.get("disputes"))
        if self.rng.random() < (shares.complaint_after_dispute if disputed else shares.complaint):
            key = uuid.uuid4().hex  # every retry files it once
            filed = await self.once_known(
                lambda: me.call(
                    "POST",
                    "/v1/complaints",
                    json={
                        "booking_id": booking_id,
                        "category": "quality",
                        "description": "not quite what was promised",
                    },
                    headers={"Idempotency-Key": key},
                    ok=(200, 201, 404, 409, 422),
                )
            )
            counts["complaints"] += 1
            if filed.status_code in (200, 201):
                complaint_id = filed.json()["complaint_id"]
                self.outcomes.complained.append(booking_id)
                self.outcomes.complaints.append(complaint_id)
                await self.settle_complaint(customer, complaint_id)

    async def settle_complaint(
        self, customer: Customer, complaint_id: str, within_s: float = 120.0
    ) -> None:
        """Wait for operations' resolution (pushed, or seen when the app looks) and answer
        it: turned down now and then (the next tier proposes more), else accepted."""
        me, counts, url = customer.caller, self.outcomes.counts, f"/v1/complaints/{complaint_id}"
        rejected = False
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline and self.running:
            customer.nudged.clear()
            complaint = await me.json("GET", url)
            status, read = complaint["status"], complaint.get("resolution_id")
            if status == "closed":
                counts["complaints_closed"] += 1
                return
            if status == "resolution_proposed":
                if not rejected and self.rng.random() < self.plan.shares.reject_resolution:
                    rejected = True
                    # A key: retried after a restart, it must not turn down the next one.
                    await me.call(
                        "POST",
                        f"{url}/reject",
                        json={"reason": "that does not put it right", "resolution_id": read},
                        ok=(200, 409),
                        headers={"Idempotency-Key": f"reject-{complaint_id}"},
                    )
                    counts["resolutions_rejected"] += 1
                else:
                    # 409: answered already by a try that timed out, or operations proposed
                    # another since it was read (the answer names it): the next look tells.
                    answer = {"resolution_id": read}
                    await me.call("POST", f"{url}/accept", json=answer, ok=(200, 409))
                continue
            await woken(customer.nudged, self.look_in())
        if not self.running:
            raise CityStopped
        counts["complaints_unsettled"] += 1
        log.warning("complaint %s: no resolution within %.0f s", complaint_id, within_s)

    async def take_off_what_was_not_done(
        self, customer: Customer, receipt: dict[str, Any], tries: int = 3
    ) -> dict[str, Any]:
        """The customer booked one of a service: more of it on the receipt was not done, and
        they take it off before signing. The receipt as it reads after (a retry whose first
        try landed is the same dispute; a receipt re-priced meanwhile is read again)."""
        url = f"/v1/receipts/{receipt['receipt_id']}"
        for _ in range(tries):
            extra = [
                {"code": line["code"], "quantity": line["quantity"] - 1, "reason": "fewer"}
                for line in receipt["lines"]
                if line["quantity"] > 1
            ]
            if not extra:
                return receipt
            taken = await customer.caller.call(
                "POST",
                f"{url}/dispute",
                json={"receipt_hash": receipt["content_hash"], "items": extra},
                ok=(200, 409),
            )
            if taken.status_code == 200:
                self.outcomes.counts["receipts_disputed"] += 1
                return dict(taken.json())
            receipt = dict(await customer.caller.json("GET", url))
        return receipt

    async def sign(self, customer: Customer, booking_id: str, receipt: dict[str, Any]) -> int:
        """Sign the receipt as shown; what is left to pay (a package may have paid it all)."""
        drawing = hashlib.sha256(f"{booking_id}-{customer.customer_id}".encode()).hexdigest()
        if customer.pays_cash:  # waiting at the door from the moment they sign
            self._cash_handed[booking_id] = asyncio.Event()
        try:
            signed = await customer.caller.call(
                "POST",
                f"/v1/receipts/{receipt['receipt_id']}/sign",
                json={
                    "receipt_hash": receipt["content_hash"],
                    "signature": {
                        "method": "drawn",
                        "artefact": drawing,
                        "signed_at": datetime.now(UTC).isoformat(),
                    },
                },
            )
        except BaseException:
            self._cash_handed.pop(booking_id, None)
            raise
        # A retry whose first try landed answers 409: the receipt as shown is what was signed.
        return int((signed.json() if signed.status_code == 200 else receipt)["amount_due"])

    async def hand_over_cash(self, booking_id: str, due: int, within_s: float = 180.0) -> None:
        """The customer pays at the door: they wait while the technician, told what to
        collect, records the cash (the visit then closes)."""
        handed = self._cash_handed[booking_id]
        try:
            if due > 0 and not await woken(handed, within_s):
                self.outcomes.counts["cash_not_recorded"] += 1
                log.warning(
                    "booking %s: the technician recorded no cash within %.0f s",
                    booking_id,
                    within_s,
                )
        finally:
            self._cash_handed.pop(booking_id, None)

    async def pay(self, customer: Customer, booking_id: str, receipt_id: str, due: int) -> None:
        """After signing: cash at the door, or another card after a decline; a good card on
        file needs nothing more."""
        if customer.pays_cash:
            await self.hand_over_cash(booking_id, due)
        elif customer.card_declined and due > 0:
            await self.pay_after_decline(customer, booking_id, receipt_id)

    async def pay_after_decline(
        self, customer: Customer, booking_id: str, receipt_id: str, within_s: float = 180.0
    ) -> None:
        """Told their card was declined, the customer pays with another card in the app. A
        pay whose answer was lost (and whose retry answers 409) shows as a charge under way,
        then succeeded."""
        me, counts = customer.caller, self.outcomes.counts
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline and self.running:
            customer.nudged.clear()
            ops = await me.json("GET", f"/v1/receipts/{receipt_id}/operations")
            charges = [o for o in ops if o["kind"] == "charge"]
            if any(o["status"] == "succeeded" for o in charges):
                counts["paid_after_decline"] += 1
                return
            if charges and all(o["status"] == "declined" for o in charges):
                r = await me.call(
                    "POST",
                    f"/v1/receipts/{receipt_id}/pay",
                    json={"payment_method": "pm_card_ok"},
                    ok=(200, 409),
                )
                if r.status_code == 200:
                    counts["paid_after_decline"] += 1
                    return
                continue  # an earlier try is under way, or paid: look again
            await woken(customer.nudged, self.look_in())
        if not self.running:
            raise CityStopped
        counts["decline_not_paid"] += 1
        log.warning("booking %s: not paid after its card was declined", booking_id)

    async def wait_for(
        self,
        me: Caller,
        booking_id: str,
        statuses: set[str],
        within_s: float,
    ) -> str | None:
        # The app looks when it is told something (its live stream), and every few seconds.
        nudged = self.customer_of[booking_id].nudged
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline and self.running:
            nudged.clear()
            status = await self.status_of(me, booking_id)
            if status in statuses:
                return status
            await woken(nudged, self.look_in())
        if not self.running:
            raise CityStopped
        return None

    @staticmethod
    async def status_of(me: Caller, booking_id: str) -> str:
        view = await me.json("GET", f"/v1/bookings/{booking_id}")
        return str(view["booking"]["status"])

    def look_in(self) -> float:
        """Seconds until an app looks by itself again, if nothing is pushed to it."""
        return LOOK_EVERY_S * self.looks.uniform(*LOOK_SPREAD)

    def halted(self, booking_id: str) -> bool:
        return booking_id in self._halted

    async def receipt(self, me: Caller, booking_id: str, within_s: float) -> dict[str, Any] | None:
        """The visit's receipt once it is issued; None if the visit was stopped at the door
        or nothing came in time. The app looks when told the receipt is ready, not at every
        push of the visit (and every LOOK_EVERY_S, and when its stream reconnects)."""
        nudged = self.customer_of[booking_id].receipt_ready
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline and self.running:
            nudged.clear()
            r = await me.call(
                "GET", "/v1/receipts", params={"booking_id": booking_id}, ok=(200, 404)
            )
            if r.status_code == 200:
                return dict(r.json())
            if self.halted(booking_id):
                return None
            await woken(nudged, self.look_in())
        if not self.running:
            raise CityStopped
        log.warning("booking %s: no receipt within %.0f s", booking_id, within_s)
        return None

    async def review(self, me: Caller, booking_id: str) -> None:
        rating = self.rng.choices([5, 4, 3, 2, 1], weights=[60, 25, 8, 4, 3])[0]
        await self.once_known(
            lambda: me.call(
                "POST",
                "/v1/reviews",
                json={"booking_id": booking_id, "rating": rating},
                ok=(201, 404, 409),
            )
        )

    @staticmethod
    async def once_known(call: Callable[[], Awaitable[Answer]], within_s: float = 60) -> Answer:
        """Reviews hears of a finished visit by event, moments after the receipt (longer while
        its consumer catches up after a restart): until then it answers 404, and the app
        tries again."""
        deadline = time.monotonic() + within_s
        while True:
            r = await call()
            if r.status_code != 404:
                return r
            if time.monotonic() > deadline:
                raise Refused(r)
            await asyncio.sleep(0.3)

    # -------------------------------------------------------------- technicians --
    async def technician(self, t: Technician) -> None:
        """The app answers offers as they are pushed to it, and looks every few seconds too
        (a push may be lost while the stream reconnects)."""
        listener = asyncio.create_task(
            self.listen(t.caller, t.nudged, '"kind": "offer"', technician=t)
        )
        try:
            while self.running:
                for look in (self.answer_offers, self.collect_cash):
                    try:
                        await look(t)
                    except (Refused, *UNREACHABLE) as exc:
                        log.warning("technician %s: %s", t.technician_id, exc)
                await woken(t.nudged, self.look_in())
                t.nudged.clear()
        finally:
            listener.cancel()

    async def listen(
        self,
        who: Caller,
        nudged: asyncio.Event,
        about: str = "",
        receipt_ready: asyncio.Event | None = None,
        technician: Technician | None = None,
    ) -> None:
        """Keep the app's live stream open; a notification containing `about` nudges it, one
        saying a receipt is ready sets `receipt_ready` too, and one telling `technician` to
        collect cash adds it to their list."""
        while self.running:
            try:
                sent_with = who.access
                async with self.streams.get(
                    "/v1/notifications/stream", headers=who.headers()
                ) as stream:
                    if stream.status == 401:
                        await who.refresh(sent_with)
                        if who.access == sent_with:  # not refreshed: do not hammer
                            await asyncio.sleep(1)
                        continue
                    if stream.status != 200:  # the gateway is starting or failing: soon
                        await asyncio.sleep(1)
                        continue
                    nudged.set()  # (re)connected: look once for what may have been missed
                    if receipt_ready is not None:
                        receipt_ready.set()
                    async for raw in stream.content:  # line by line
                        line = raw.decode()
                        if technician is not None and line.startswith(": connected"):
                            # Subscribed: a cash push missed before now is in the list.
                            technician.catch_up = True
                            nudged.set()
                        if not line.startswith("data: "):
                            continue
                        if about in line:
                            nudged.set()
                            if receipt_ready is not None and '"kind": "receipt_ready"' in line:
                                receipt_ready.set()
                        elif technician is not None and '"kind": "cash_due"' in line:
                            technician.owed(json.loads(line.removeprefix("data: ")))
                            nudged.set()
            except UNREACHABLE:
                await asyncio.sleep(1)

    async def answer_offers(self, t: Technician) -> None:
        offers = await t.caller.json("GET", f"/v1/technicians/{t.technician_id}/offers")
        for offer in offers:
            offer_id = offer["offer"]["offer_id"]
            if self.rng.random() < self.plan.shares.decline:
                await t.caller.call("POST", f"/v1/offers/{offer_id}/decline", ok=(200, 409))
                continue
            r = await t.caller.call("POST", f"/v1/offers/{offer_id}/accept", ok=(200, 409))
            if r.status_code == 200:  # the visit, now theirs: where the door is, at last
                self.work_on(t, {**offer, **r.json()})
        # The job list: a visit accepted when the answer was lost (a retried accept answers
        # 409), or one whose app gave up half-way, is picked up again where it stands.
        if offers or t.working or t.resume or t.looks % 3 == 0:
            t.resume = False
            jobs = await t.caller.json("GET", f"/v1/technicians/{t.technician_id}/visits")
            for job in jobs:
                self.work_on(t, job)
        t.looks += 1

    async def collect_cash(self, t: Technician) -> None:
        """Record the cash each customer who signed without a card handed over, then mark
        that notification read; after a reconnect, the unread ones are looked up first.
        What fails to go through stays on the list for the next look."""
        if t.catch_up:
            notes = await t.caller.json("GET", "/v1/notifications", params={"limit": 50})
            t.catch_up = False  # only once the list was read
            for note in notes:
                if note["kind"] == "cash_due" and note["read_at"] is None:
                    t.owed(note)
        for receipt_id, (amount, booking_id, note_id) in list(t.cash_due.items()):
            try:
                await self.record_cash(t, receipt_id, amount, booking_id)
                await t.caller.call("POST", f"/v1/notifications/{note_id}/read")
            except Refused as exc:
                if exc.status not in (404, 422):
                    raise
                log.warning("cash for %s by %s refused: %s", booking_id, t.technician_id, exc)
            del t.cash_due[receipt_id]

    async def record_cash(
        self, t: Technician, receipt_id: str, amount: int, booking_id: str
    ) -> None:
        path = f"/v1/receipts/{receipt_id}/cash"
        r = await t.caller.call("POST", path, json={"amount": amount}, ok=(200, 409))
        recorded = r.status_code == 200
        if not recorded:  # paid already (a first try whose answer was lost), or by a card
            receipt = await t.caller.json("GET", f"/v1/receipts/{receipt_id}")
            if receipt["status"] != "settled":
                log.warning("cash for %s not taken: %s", booking_id, r.text[:200])
                return  # nothing handed over: the customer goes on waiting, and is counted
            recorded = any(p.get("method") == "cash" for p in receipt.get("payments", []))
        if recorded and receipt_id not in self._cash_counted:
            self._cash_counted.add(receipt_id)
            self.outcomes.counts["cash"] += 1
        handed = self._cash_handed.get(booking_id)
        if handed is not None:  # the customer is still at the door
            handed.set()

    def work_on(self, t: Technician, job: dict[str, Any]) -> None:
        if job["booking_id"] in t.working:
            return
        t.working.add(job["booking_id"])
        task = asyncio.create_task(self.visit(t, job))
        self.visits.add(task)
        task.add_done_callback(self.visits.discard)

    async def pause(self, low: float, high: float) -> None:
        await asyncio.sleep(self.rng.uniform(low, high) * self.plan.pace)

    async def visit(self, t: Technician, job: dict[str, Any]) -> None:
        try:
            await self._visit(t, job)
        except (Refused, *UNREACHABLE) as exc:
            # As a technician would: try again shortly from wherever the visit stands.
            log.warning("visit %s by %s interrupted: %s", job["booking_id"], t.technician_id, exc)
            t.resume = True
            asyncio.get_running_loop().call_later(5.0, t.nudged.set)
        finally:
            t.working.discard(job["booking_id"])

    async def _visit(self, t: Technician, job: dict[str, Any]) -> None:
        """The visit from where it stands (`job["status"]`) to its completion."""
        shares, me, booking_id = self.plan.shares, t.caller, job["booking_id"]
        where, status = job["location"], job["status"]
        if status == "assigned":
            await self.pause(0.2, 1.0)
            await me.call("POST", f"/v1/visits/{booking_id}/en-route")
            status = "en_route"
        if status == "en_route":
            await self.drive(t, booking_id, where)
        if status == "in_service":
            await self.finish(t, booking_id, job)
            return
        customer = self.customer_of.get(booking_id)
        if customer is None:
            return
        if status == "identity_confirmed":
            await self.begin_and_finish(t, booking_id, job)
            return
        if self.rng.random() < shares.not_the_person:
            self._halted.add(booking_id)
            customer.nudged.set()  # the app sees the visit stopped
            customer.receipt_ready.set()
            await customer.caller.call("POST", f"/v1/visits/{booking_id}/not-the-person")
            self.outcomes.counts["safety_alerts"] += 1
            return
        door = await customer.caller.json("GET", f"/v1/visits/{booking_id}/door-check")
        if self.rng.random() < shares.wrong_code:
            await me.call(
                "POST",
                f"/v1/visits/{booking_id}/identity",
                json={"code": "000000" if door["visit_code"] != "000000" else "111111"},
                ok=(422,),
            )
            self.outcomes.counts["wrong_codes"] += 1
        await me.call(
            "POST", f"/v1/visits/{booking_id}/identity", json={"code": door["visit_code"]}
        )
        await self.begin_and_finish(t, booking_id, job)

    async def drive(self, t: Technician, booking_id: str, where: dict[str, float]) -> None:
        me, (lat, lon) = t.caller, t.home
        for step in (1, 2, 3):  # the app reports the drive
            here = {
                "lat": lat + (where["lat"] - lat) * step / 3,
                "lon": lon + (where["lon"] - lon) * step / 3,
            }
            await me.call(
                "POST", f"/v1/technicians/{t.technician_id}/location", json={"location": here}
            )
            await self.pause(0.2, 0.6)
        at_door = dict(where)
        if self.rng.random() < self.plan.shares.far_check_in:
            at_door["lat"] += 0.02  # about 2 km off: flagged to operations
        await me.call("POST", f"/v1/visits/{booking_id}/arrive", json={"location": at_door})

    async def begin_and_finish(self, t: Technician, booking_id: str, job: dict[str, Any]) -> None:
        await t.caller.call("POST", f"/v1/visits/{booking_id}/start")
        await self.finish(t, booking_id, job)

    async def finish(self, t: Technician, booking_id: str, job: dict[str, Any]) -> None:
        await self.pause(0.5, 1.5)
        performed = [{"code": line["code"], "quantity": line["quantity"]} for line in job["lines"]]
        if self.rng.random() < self.plan.shares.over_record:
            performed[0]["quantity"] += 1
        await t.caller.call(
            "POST", f"/v1/visits/{booking_id}/complete", json={"performed": performed}
        )
