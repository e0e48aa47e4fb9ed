"""The operations dashboard in a real headless Chromium (Debian's, driven by Playwright; no
browser is downloaded) against the real platform: sign in, watch bookings appear and move
as events happen without a reload, see a safety alert and acknowledge it, reassign a visit
from the page and see the customer told, waive a late-cancellation fee a customer owes,
record a follow-up call, close a store's week, and a store's view that shows no other
store.

Screenshots of each step are kept in .run/test/artefacts/dashboard/.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from playwright.async_api import Browser, Page, async_playwright, expect
from pymongo import AsyncMongoClient

from services.booking.followup import FollowUp, FollowUpKind, FollowUpStatus
from services.booking.storage import FollowUps
from services.gateway.signin import add_staff
from services.payments.settlements import week_before, week_of, week_start
from services.payments.storage import KEEP_WEEKS
from shared.auth import Actor, Role
from shared.events.payments import RefundIssued
from shared.events.types import PricedLine
from shared.mongo import Document
from shared.timers import schedule
from tests.conftest import Platform
from tests.harness import TEST_RUN_DIR, eventually, publish
from tests.seed import (
    OPS,
    accept_offer,
    as_customer,
    as_store,
    as_technician,
    bearer,
    booking_body,
    gateway_token,
    get_json,
    known,
    seed_customer,
    seed_item,
    seed_technician,
    service_completed,
)
from tests.test_payments_service import cancelled, fee_is, issued, take_off
from tests.test_reviews_service import a_refund_not_made

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("DOORSTEP_CHROMIUM", "/usr/bin/chromium")
# As the machine's probe starts it: no background traffic to a network that is closed anyway.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTEFACTS = TEST_RUN_DIR / "artefacts" / "dashboard"
LIVE = 20_000  # ms: how long the page may take to show a change that happened elsewhere


def chromium_ready() -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: ./dev test installs Debian's chromium package")
    ARTEFACTS.mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    chromium_ready()
    # launch() gives Chromium a new, empty profile of its own, removed when it closes.
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


class Dashboard:
    """One signed-in page, recording every request it makes."""

    def __init__(self, page: Page, origin: str) -> None:
        self.page, self.origin = page, origin
        self.requests: list[str] = []
        page.on("request", lambda r: self.requests.append(r.url))

    async def sign_in(self, email: str, password: str) -> None:
        await self.page.goto(f"{self.origin}/dashboard")
        await self.page.get_by_label("E-mail").fill(email)
        await self.page.get_by_label("Password").fill(password)
        await self.page.get_by_role("button", name="Sign in").click()
        await expect(self.page.get_by_role("status")).to_have_text("Live", timeout=LIVE)
        # Set once; still there at the end means the page was never reloaded.
        await self.page.evaluate("window.__sameDocument = true")

    async def shot(self, name: str) -> None:
        await self.page.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True)

    def row(self, table: str, booking_id: str) -> Any:
        return self.page.locator(f'#{table} tr[data-booking="{booking_id}"]')

    async def record_repaid(
        self, row: Any, button: str, amount: str, way: str, reference: str
    ) -> None:
        """Record from `row` (its `button`) a refund owed of `amount` as repaid `way`, with
        its reference; the row leaves the list."""
        await row.get_by_role("button", name=button).click()
        dialog = self.page.get_by_role("dialog")
        await expect(dialog).to_contain_text(amount)
        await dialog.get_by_label("How").select_option(way)
        await dialog.get_by_label("Reference").fill(reference)
        await dialog.get_by_role("button", name="Record repaid").click()
        await expect(dialog).to_be_hidden(timeout=LIVE)
        await expect(row).to_have_count(0, timeout=LIVE)

    async def assert_never_reloaded_nor_left_the_platform(self) -> None:
        assert await self.page.evaluate("window.__sameDocument === true")
        foreign = [u for u in self.requests if not _same_origin(u, self.origin)]
        assert not foreign, f"the page reached outside the platform: {foreign}"


def _same_origin(url: str, origin: str) -> bool:
    if url.startswith(("data:", "blob:")):
        return True
    a, b = urlsplit(url), urlsplit(origin)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


async def staff(mongo: AsyncMongoClient[Document], prefix: str, store: str | None = None) -> str:
    email, password = f"staff-{uuid.uuid4().hex[:8]}@doorstep.test", uuid.uuid4().hex
    await add_staff(mongo[f"{prefix}_gateway"], email, password, store_id=store)
    return f"{email} {password}"


async def operations_board(
    browser: Browser, platform: Platform, mongo: AsyncMongoClient[Document]
) -> Dashboard:
    """A new page, signed in by a new member of operations' staff."""
    board = Dashboard(
        await browser.new_page(viewport={"width": 1280, "height": 1400}), platform.url("gateway")
    )
    await board.sign_in(*(await staff(mongo, platform.prefix)).split())
    return board


async def book(booking: httpx.AsyncClient, customer: str, code: str) -> str:
    r = await booking.post(
        "/bookings",
        json=booking_body(customer, code),
        headers={"Idempotency-Key": uuid.uuid4().hex, **as_customer(customer)},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["booking_id"])


async def test_operations_watch_bookings_move_live_and_act_from_the_page(
    platform: Platform, mongo: AsyncMongoClient[Document], browser: Browser
) -> None:
    skill = f"nails-{uuid.uuid4().hex[:6]}"
    code, customer = f"{skill}.manicure", f"cus_{uuid.uuid4().hex[:8]}"
    first, second = f"tech_{uuid.uuid4().hex[:8]}", f"tech_{uuid.uuid4().hex[:8]}"
    second_badge = f"LX-{uuid.uuid4().hex[:6].upper()}"
    async with platform.client("booking", acting_as=OPS) as booking:
        await seed_item(booking, code, skill=skill)
        await seed_customer(booking, customer)
    async with platform.client("dispatch") as dispatch:
        await seed_technician(dispatch, first, f"LX-{uuid.uuid4().hex[:6].upper()}", skills=[skill])

    board = Dashboard(await browser.new_page(viewport={"width": 1280, "height": 1400}), "")
    board.origin = platform.url("gateway")
    await board.sign_in(*(await staff(mongo, platform.prefix)).split())
    await expect(board.page.locator("#viewer")).to_have_text("Operations: every store")

    # A booking made elsewhere appears in the waiting queue, with its waiting time counting.
    async with platform.client("booking") as booking:
        booking_id = await book(booking, customer, code)
    waiting = board.row("waiting", booking_id)
    await expect(waiting).to_be_visible(timeout=LIVE)
    await expect(waiting.locator("[data-since]")).to_have_text(re.compile(r"^\d+:\d\d$"))
    await board.shot("1-booking-waiting")

    # The technician accepts: the row moves to the visits, assigned to them; then en route.
    async with platform.client("dispatch") as dispatch:
        await accept_offer(dispatch, first, booking_id)
        visit = board.row("visits", booking_id)
        await expect(visit.locator("[data-stage]")).to_have_text("assigned", timeout=LIVE)
        await expect(waiting).to_have_count(0)
        r = await dispatch.post(f"/visits/{booking_id}/en-route", headers=as_technician(first))
        assert r.status_code == 200, r.text
        await expect(visit.locator("[data-stage]")).to_have_text("en route", timeout=LIVE)
        # A second qualified technician comes on shift: operations move the visit to them.
        await seed_technician(
            dispatch, second, second_badge, skills=[skill], full_name="Bruno Teixeira"
        )
    await board.shot("2-visit-en-route")
    await visit.get_by_role("button", name=f"Reassign booking {booking_id}").click()
    dialog = board.page.get_by_role("dialog")
    await dialog.get_by_role("radio", name=f"Bruno Teixeira (badge {second_badge})").check()
    await dialog.get_by_label("Reason").fill("first technician's car broke down")
    await board.shot("3-reassign-dialog")
    await dialog.get_by_role("button", name="Reassign").click()
    await expect(dialog).to_be_hidden(timeout=LIVE)
    await expect(visit.locator("[data-technician]")).to_have_text(
        f"Bruno Teixeira (badge {second_badge})", timeout=LIVE
    )

    # The customer is told who is coming now, with the new badge number.
    token = await gateway_token(mongo, platform.prefix, Actor(role=Role.CUSTOMER, subject=customer))
    async with platform.client("gateway") as api:

        async def told() -> dict[str, Any] | None:
            r = await api.get("/v1/notifications", headers=bearer(token))
            return next((n for n in r.json() if n["kind"] == "technician_changed"), None)

        note = await eventually(told, what="the customer's 'technician changed' notification")
        # And the first technician's app drops the visit at once.
        as_first = Actor(role=Role.TECHNICIAN, subject=first)
        first_token = await gateway_token(mongo, platform.prefix, as_first)

        async def withdrawn() -> dict[str, Any] | None:
            r = await api.get("/v1/notifications", headers=bearer(first_token))
            return next((n for n in r.json() if n["kind"] == "visit_withdrawn"), None)

        gone = await eventually(withdrawn, what="the first technician's 'withdrawn' notification")
        assert gone["booking_id"] == booking_id
    assert second_badge in note["title"]
    assert note["data"]["technician"]["badge_number"] == second_badge

    # At the door the customer says "this is not the person": the alert is at the top at once.
    async with platform.client("dispatch") as dispatch:
        r = await dispatch.post(
            f"/visits/{booking_id}/arrive",
            json={"location": {"lat": 38.7223, "lon": -9.1393}},
            headers=as_technician(second),
        )
        assert r.status_code == 200, r.text
        r = await dispatch.post(
            f"/visits/{booking_id}/not-the-person", headers=as_customer(customer)
        )
        assert r.status_code == 200, r.text
    alert = board.page.locator(f'#alerts-list article:has-text("Booking {booking_id}")')
    await expect(alert).to_be_visible(timeout=LIVE)
    await expect(alert.get_by_role("heading")).to_have_text("⚠ not the person · critical")
    await expect(alert.get_by_role("link")).to_have_count(
        2
    )  # the customer's and the technician's numbers
    await board.shot("4-safety-alert")

    await alert.get_by_role("button", name=f"Acknowledge alert on booking {booking_id}").click()
    await dialog.get_by_label("What are you doing about it?").fill(
        "called the customer; police on the way"
    )
    await dialog.get_by_role("button", name="Acknowledge").click()
    await expect(alert).to_contain_text("Acknowledged by ops:", timeout=LIVE)
    await board.shot("5-alert-acknowledged")
    async with platform.client("dispatch", acting_as=OPS) as dispatch:
        r = await dispatch.get("/safety-alerts", params={"open_only": "false", "limit": 500})
        recorded = next(a for a in r.json() if a["booking_id"] == booking_id)
    assert recorded["acknowledged_by"].startswith("ops:staff-")
    assert recorded["note"] == "called the customer; police on the way"
    # The alert stopped the technician's work too; operations put them back from the page.
    async with platform.client("dispatch", acting_as=OPS) as dispatch:
        assert (await dispatch.get(f"/technicians/{second}")).json()["status"] == "suspended"
    await alert.get_by_role("button", name=f"Reinstate technician {second}").click()
    await dialog.get_by_label("What you found").fill("the customer's partner opened the door")
    await dialog.get_by_role("button", name="Reinstate").click()

    async def back_at_work() -> Any:
        async with platform.client("dispatch", acting_as=OPS) as dispatch:
            file = (await dispatch.get(f"/technicians/{second}")).json()
        return file if file["status"] == "active" else None

    await eventually(back_at_work, what="the technician reinstated from the board")
    # The button lifts that alert's suspension only: pressed again, it says why not.
    await alert.get_by_role("button", name=f"Reinstate technician {second}").click()
    await dialog.get_by_label("What you found").fill("pressed twice")
    await dialog.get_by_role("button", name="Reinstate").click()
    await expect(dialog).to_contain_text(f"not suspended for safety alert {recorded['alert_id']}")
    await dialog.get_by_role("button", name="Cancel").click()

    # Reviews opened a critical safety complaint by itself: its first-response clock runs on
    # the page; operations respond, then propose a remedy, from the page.
    complaint = board.page.locator("#complaints tr", has_text=f"booking {booking_id}")
    await expect(complaint).to_contain_text("safety", timeout=LIVE)
    await expect(complaint.locator("[data-due]")).to_have_text(re.compile(r"^in 1[45]:\d\d$"))
    complaint_id = await complaint.get_attribute("data-complaint")
    await complaint.get_by_role("button", name=f"Respond to complaint {complaint_id}").click()
    await dialog.get_by_label("Your first response").fill("We are with you; a manager calls now.")
    await dialog.get_by_role("button", name="Send response").click()
    await expect(complaint).to_contain_text("in progress", timeout=LIVE)
    await expect(complaint).to_contain_text("resolution in")
    await complaint.get_by_role(
        "button", name=f"Propose a remedy for complaint {complaint_id}"
    ).click()
    await dialog.get_by_label("Resolution proposed").fill("The visit is void; we apologise.")
    await dialog.get_by_label("Remedy", exact=True).select_option("apology")
    await dialog.get_by_role("button", name="Propose").click()
    await expect(complaint).to_contain_text("resolution proposed", timeout=LIVE)
    await expect(complaint.locator("[data-remedy]")).to_have_text("apology: made")
    await board.shot("6-complaint-remedied")
    async with platform.client("reviews", acting_as=OPS) as reviews:
        proposed = (await reviews.get(f"/complaints/{complaint_id}")).json()
    # Sent with a key, so pressing Propose again after a lost answer proposes nothing twice.
    assert [r["proposal"][:8] for r in proposed["remedies"]] == ["resolve-"]

    await board.assert_never_reloaded_nor_left_the_platform()


async def test_operations_see_a_remedy_not_made_and_propose_another_from_the_page(
    platform: Platform,
    mongo: AsyncMongoClient[Document],
    browser: Browser,
    kafka_producer: AIOKafkaProducer,
) -> None:
    """A refund for a visit cancelled before it came has nothing to give back: the complaint
    shows it not made, and why, as soon as payments says so (not when the quiet week ends),
    with a button to propose another remedy in its place; the coupon proposed there is the
    resolution the customer now answers. Should the refund be made after all once the
    customer accepted the coupon, the closed complaint stays in sight, flagged, until
    operations say from the page how they dealt with it."""
    board = await operations_board(browser, platform, mongo)
    customer, url, seen = await a_refund_not_made(platform)
    complaint_id = seen["complaint_id"]
    row = board.page.locator(f'#complaints tr[data-complaint="{complaint_id}"]')
    refund = row.locator('[data-made="no"]')
    await expect(refund).to_contain_text("refund of all paid: not made", timeout=LIVE)
    await expect(refund).to_contain_text("cancelled before its visit")
    await expect(row).to_have_class("breach-row")
    await expect(row).to_contain_text("resolution proposed")
    await board.shot("10-remedy-not-made")

    await row.get_by_role("button", name=f"Propose a remedy for complaint {complaint_id}").click()
    dialog = board.page.get_by_role("dialog")
    await dialog.get_by_label("Resolution proposed").fill("5.00 off your next visit instead")
    await dialog.get_by_label("Remedy", exact=True).select_option("coupon")
    await dialog.get_by_label("Amount").fill("500")
    await dialog.get_by_role("button", name="Propose").click()
    await expect(dialog).to_be_hidden(timeout=LIVE)
    coupon = row.locator("[data-remedy]")
    await expect(coupon).to_have_text(
        re.compile(r"^coupon \D*5[.,]00\D*: (under way|made)$"), timeout=LIVE
    )
    await expect(row.get_by_role("button", name=re.compile("Propose a remedy"))).to_have_count(0)
    await board.shot("11-another-remedy")

    # The customer takes the coupon; then the refund turns out made all the same (payments
    # made it before the withdrawal reached it): the customer has both, and operations see it.
    async with platform.client("reviews") as reviews:
        now = await get_json(reviews, url, headers=as_customer(customer))
        assert (now["status"], now["resolution"]) == (
            "resolution_proposed",
            "5.00 off your next visit instead",
        )
        assert [r["kind"] for r in now["remedies"]] == ["refund", "coupon"]
        accepted = await reviews.post(
            f"{url}/accept",
            json={"resolution_id": now["resolution_id"]},
            headers=as_customer(customer),
        )
        assert accepted.status_code == 200, accepted.text
    await expect(row).to_have_count(0, timeout=LIVE)  # closed, nothing amiss: off the list
    refund_id = seen["remedies"][0]["remedy_id"]
    made = RefundIssued(
        refund_id=f"complaint:{complaint_id}:{refund_id}",
        receipt_id="rc_made_after_all",
        booking_id=seen["booking_id"],
        customer_id=customer,
        amount=1500,
        currency="EUR",
        to_provider=1500,
        to_cash=0,
        to_prepaid=0,
        reason="late",
    )
    await publish(kafka_producer, platform.prefix, made)
    twice = row.locator('[data-made="twice"]')
    await expect(twice).to_contain_text("made after another resolution answered it", timeout=LIVE)
    await expect(row).to_contain_text("closed")
    await expect(row).to_have_class("breach-row")
    # Nothing to propose on it; operations say how they dealt with it, and it leaves them.
    await expect(row.get_by_role("button", name=re.compile("Propose a remedy"))).to_have_count(0)
    await board.shot("12-remedy-made-twice")
    async with platform.client("reviews", acting_as=OPS) as reviews:
        queue = await get_json(reviews, "/complaints", made_twice="true")
    assert complaint_id in [c["complaint_id"] for c in queue]  # operations' queue of them
    await row.get_by_role(
        "button", name=f"Deal with remedy {refund_id} of complaint {complaint_id}"
    ).click()
    await dialog.get_by_label("What was done").fill("the customer keeps both: goodwill")
    await dialog.get_by_role("button", name="Dealt with").click()
    await expect(dialog).to_be_hidden(timeout=LIVE)
    await expect(row).to_have_count(0, timeout=LIVE)
    async with platform.client("reviews", acting_as=OPS) as reviews:
        theirs = await get_json(reviews, f"/complaints/{complaint_id}")
        queue = await get_json(reviews, "/complaints", made_twice="true")
    assert complaint_id not in [c["complaint_id"] for c in queue]
    async with platform.client("reviews") as reviews:
        mine = await get_json(reviews, url, headers=as_customer(customer))
    assert theirs["remedies"][0]["dealt_with"] == "the customer keeps both: goodwill"
    assert mine["remedies"][0]["dealt_with"] is None  # operations' words, theirs alone
    await board.assert_never_reloaded_nor_left_the_platform()


async def test_a_store_sees_only_its_own_technicians_work(
    platform: Platform, mongo: AsyncMongoClient[Document], browser: Browser
) -> None:
    skill = f"clean-{uuid.uuid4().hex[:6]}"
    code = f"{skill}.home"
    mine, theirs = f"store_{uuid.uuid4().hex[:6]}", f"store_{uuid.uuid4().hex[:6]}"
    ours, other = f"tech_{uuid.uuid4().hex[:8]}", f"tech_{uuid.uuid4().hex[:8]}"
    customers = [f"cus_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    async with platform.client("booking", acting_as=OPS) as booking:
        await seed_item(booking, code, skill=skill)
        for customer in customers:
            await seed_customer(booking, customer)
    async with platform.client("dispatch") as dispatch, platform.client("booking") as booking:
        await seed_technician(
            dispatch, ours, f"LX-{uuid.uuid4().hex[:6].upper()}", skills=[skill], store_id=mine
        )
        ours_booking = await book(booking, customers[0], code)
        await accept_offer(dispatch, ours, ours_booking)
        await seed_technician(
            dispatch, other, f"LX-{uuid.uuid4().hex[:6].upper()}", skills=[skill], store_id=theirs
        )
        their_booking = await book(booking, customers[1], code)
        await accept_offer(dispatch, other, their_booking)
        # Both are on the operations board, so the store's page below is filtered, not late.
        async with platform.client("gateway") as api:
            ops_token = await gateway_token(
                mongo, platform.prefix, Actor(role=Role.OPS, subject="ops_t")
            )

            async def both_on_board() -> bool:
                r = await api.get("/v1/board", headers=bearer(ops_token))
                ids = {b["booking_id"] for b in r.json()["bookings"] if b["status"] == "assigned"}
                return {ours_booking, their_booking} <= ids

            await eventually(both_on_board, what="both bookings assigned on the operations board")

    page = Dashboard(
        await browser.new_page(viewport={"width": 1280, "height": 1400}), platform.url("gateway")
    )
    await page.sign_in(*(await staff(mongo, platform.prefix, store=mine)).split())
    await expect(page.page.locator("#viewer")).to_have_text(f"Store {mine}")
    await expect(page.row("visits", ours_booking)).to_be_visible(timeout=LIVE)
    await expect(page.row("visits", their_booking)).to_have_count(0)
    await expect(page.page.locator(f'#on-shift tr[data-technician="{ours}"]')).to_be_visible(
        timeout=LIVE
    )
    await expect(page.page.locator(f'#on-shift tr[data-technician="{other}"]')).to_have_count(0)
    await expect(page.page.locator('[data-figure="Bookings"]')).to_have_text("1")
    # Operations' actions are not offered to a store, and its rows carry no customer.
    await expect(
        page.page.get_by_role("button", name=f"Reassign booking {ours_booking}")
    ).to_have_count(0)
    await expect(page.page.locator("#fees-section")).to_be_hidden()  # customers' fees: not theirs
    await expect(page.page.locator("#written-off-part")).to_be_hidden()  # reopening: operations'
    await page.shot("7-store-view")

    # A change to the other store's booking never reaches this page; one to ours does.
    async with platform.client("dispatch") as dispatch:
        r = await dispatch.post(f"/visits/{their_booking}/en-route", headers=as_technician(other))
        assert r.status_code == 200, r.text
        r = await dispatch.post(f"/visits/{ours_booking}/en-route", headers=as_technician(ours))
        assert r.status_code == 200, r.text
    await expect(page.row("visits", ours_booking).locator("[data-stage]")).to_have_text(
        "en route", timeout=LIVE
    )
    await expect(page.row("visits", their_booking)).to_have_count(0)
    await page.assert_never_reloaded_nor_left_the_platform()

    # The same through the API the page uses: only this store's rows, and no customer on them.
    async with platform.client("gateway") as api:
        store_token = await gateway_token(
            mongo, platform.prefix, Actor(role=Role.STORE, subject="s@x", store_id=mine)
        )
        seen = (await api.get("/v1/board", headers=bearer(store_token))).json()
    assert {b["booking_id"] for b in seen["bookings"]} == {ours_booking}
    assert all(b["customer_id"] is None and b["location"] is None for b in seen["bookings"])
    assert seen["viewer"] == f"store:{mine}"


async def test_a_safety_alert_is_acknowledged_once_and_only_by_operations(
    platform: Platform,
) -> None:
    skill = f"nails-{uuid.uuid4().hex[:6]}"
    code, customer = f"{skill}.manicure", f"cus_{uuid.uuid4().hex[:8]}"
    tech, store = f"tech_{uuid.uuid4().hex[:8]}", f"store_{uuid.uuid4().hex[:6]}"
    async with platform.client("booking", acting_as=OPS) as booking:
        await seed_item(booking, code, skill=skill)
        await seed_customer(booking, customer)
    async with platform.client("dispatch") as dispatch, platform.client("booking") as booking:
        await seed_technician(
            dispatch, tech, f"LX-{uuid.uuid4().hex[:6].upper()}", skills=[skill], store_id=store
        )
        booking_id = await book(booking, customer, code)
        await accept_offer(dispatch, tech, booking_id)
        r = await dispatch.post(
            f"/visits/{booking_id}/not-the-person", headers=as_customer(customer)
        )
        assert r.status_code == 200, r.text
        listed = await dispatch.get("/safety-alerts", headers=as_store(store))
        assert listed.status_code == 200, listed.text
        (alert,) = listed.json()
        assert (alert["kind"], alert["severity"], alert["store_id"], alert["customer_id"]) == (
            "not_the_person",
            "critical",
            store,
            None,
        )
        other = await dispatch.get(
            "/safety-alerts", params={"store_id": "store_else"}, headers=as_store(store)
        )
        assert other.status_code == 403
        note = {"note": "on it"}
        path = f"/safety-alerts/{alert['alert_id']}/acknowledge"
        refused = await dispatch.post(path, json=note, headers=as_store(store))
        assert refused.status_code == 403
        assert (await dispatch.get("/safety-alerts", headers=as_store(store))).json()[0][
            "acknowledged_at"
        ] is None
        short = await dispatch.post(path, json={"note": ""}, headers=OPS)
        assert short.status_code == 422
        done = await dispatch.post(path, json=note, headers=OPS)
        assert done.status_code == 200, done.text
        assert done.json()["acknowledged_by"] == "ops:ops_test"
        again = await dispatch.post(path, json={"note": "me too"}, headers=OPS)
        assert again.status_code == 409
        assert "acknowledged by ops:ops_test" in again.json()["error"]["message"]
        left = await dispatch.get("/safety-alerts", headers=as_store(store))
        assert left.json() == []  # nothing open any more
        # The store reads what is being done, not who raised it nor which staff member.
        (taken,) = (
            await dispatch.get("/safety-alerts?open_only=false", headers=as_store(store))
        ).json()
        assert (taken["customer_id"], taken["acknowledged_by"], taken["note"]) == (
            None,
            "operations",
            "on it",
        )
        (ours,) = (
            await dispatch.get(f"/safety-alerts?open_only=false&store_id={store}", headers=OPS)
        ).json()
        assert (ours["customer_id"], ours["acknowledged_by"]) == (customer, "ops:ops_test")
        unknown = await dispatch.post("/safety-alerts/al_nope/acknowledge", json=note, headers=OPS)
        assert unknown.status_code == 404


async def test_operations_see_a_fee_owed_and_waive_it_from_the_page(
    platform: Platform, mongo: AsyncMongoClient[Document], browser: Browser
) -> None:
    """A customer with no card on file cancels late: the fee they owe appears on operations'
    page as it happens; operations waive it there, and the customer is told why. A store's
    board never shows fees (they are between the customer and the platform)."""
    skill = f"brows-{uuid.uuid4().hex[:6]}"
    code, customer = f"{skill}.shape", f"cus_{uuid.uuid4().hex[:8]}"
    async with platform.client("booking", acting_as=OPS) as booking:
        await seed_item(
            booking, code, skill=skill, cancellation_fee=1500, free_cancellation_hours=72
        )
        await seed_customer(booking, customer)

    board = await operations_board(browser, platform, mongo)
    async with platform.client("booking") as booking:
        booking_id = await book(booking, customer, code)
        r = await booking.post(f"/bookings/{booking_id}/cancel", headers=as_customer(customer))
        assert r.status_code == 200, r.text
        assert r.json()["cancellation_fee"] == 1500
    fee_id = f"fee_{booking_id}"
    row = board.page.locator(f'#fees tr[data-fee="{fee_id}"]')
    await expect(row).to_be_visible(timeout=LIVE)
    await expect(row).to_contain_text(customer)
    await expect(row).to_contain_text("no card on file")
    await expect(row).to_contain_text("15.00")
    await expect(board.page.locator("#fees-title")).to_have_text(
        re.compile(r"^Late-cancellation fees owed: \d+$")
    )
    await board.shot("8-fee-owed")

    await row.get_by_role("button", name=f"Waive fee {fee_id}").click()
    dialog = board.page.get_by_role("dialog")
    await dialog.get_by_label("Why the customer need not pay").fill("our technician was late")
    await dialog.get_by_role("button", name="Waive").click()
    await expect(dialog).to_be_hidden(timeout=LIVE)
    await expect(row).to_have_count(0, timeout=LIVE)
    await expect(board.page.locator("#fees-today")).to_contain_text("waived")
    await board.shot("9-fee-waived")
    await board.assert_never_reloaded_nor_left_the_platform()

    async with platform.client("payments", acting_as=OPS) as payments:
        fee = (await payments.get(f"/cancellation-fees/{fee_id}")).json()
    assert (fee["status"], fee["waiver_reason"]) == ("waived", "our technician was late")
    assert fee["waived_by"].startswith("staff-")  # who signed in to the page
    async with platform.client("gateway") as api:
        me = await gateway_token(
            mongo, platform.prefix, Actor(role=Role.CUSTOMER, subject=customer)
        )

        async def told() -> dict[str, Any] | None:
            r = await api.get("/v1/notifications", headers=bearer(me))
            return next((n for n in r.json() if n["kind"] == "cancellation_fee_waived"), None)

        note = await eventually(told, what="the customer told the fee is waived")
        assert note["body"] == "our technician was late"
        ops = await gateway_token(mongo, platform.prefix, Actor(role=Role.OPS, subject="ops_t"))
        seen = (await api.get("/v1/board", headers=bearer(ops))).json()
        (waived,) = [f for f in seen["fees"] if f["fee_id"] == fee_id]
        assert (waived["status"], waived["note"]) == ("waived", "our technician was late")
        store = await gateway_token(
            mongo, platform.prefix, Actor(role=Role.STORE, subject="s@x", store_id="store_chiado")
        )
        assert (await api.get("/v1/board", headers=bearer(store))).json()["fees"] == []


def visit_ids() -> tuple[str, str, str]:
    """A new customer, store and booking."""
    return (
        f"cus_{uuid.uuid4().hex[:8]}",
        f"store_{uuid.uuid4().hex[:8]}",
        f"bk_{uuid.uuid4().hex[:10]}",
    )


async def completed_paying_with(
    payments: httpx.AsyncClient,
    producer: AIOKafkaProducer,
    platform: Platform,
    *,
    card: str,
    ids: tuple[str, str, str],
) -> None:
    """The customer's card on file is `card`, and the store's technician completed the
    booking's visit."""
    customer, store, booking_id = ids
    r = await payments.put(
        f"/customers/{customer}/payment-method",
        json={"payment_method": card},
        headers=as_customer(customer),
    )
    assert r.status_code == 200, r.text
    await publish(producer, platform.prefix, service_completed(booking_id, customer, store))


async def signed_paying_with(
    payments: httpx.AsyncClient,
    producer: AIOKafkaProducer,
    platform: Platform,
    *,
    card: str,
    ids: tuple[str, str, str],
) -> Any:
    """The visit completed with `card` on file, and its receipt signed: the receipt."""
    await completed_paying_with(payments, producer, platform, card=card, ids=ids)
    customer, _, booking_id = ids
    return await signed(payments, customer, booking_id)


async def signed(payments: httpx.AsyncClient, customer: str, booking_id: str) -> Any:
    """The visit's receipt, once issued, signed by its customer in the app."""
    receipt = await eventually(
        lambda: get_json(
            payments, "/receipts", headers=as_customer(customer), booking_id=booking_id
        ),
        what="the receipt issued",
    )
    signature = {
        "method": "drawn",
        "artefact": hashlib.sha256(uuid.uuid4().bytes).hexdigest(),
        "signed_at": datetime.now(UTC).isoformat(),
    }
    r = await payments.post(
        f"/receipts/{receipt['receipt_id']}/sign",
        json={"receipt_hash": receipt["content_hash"], "signature": signature},
        headers=as_customer(customer),
    )
    assert r.status_code == 200, r.text
    return receipt


async def test_operations_see_a_visit_unpaid_until_it_is_paid_or_they_write_it_off_and_back(
    platform: Platform,
    mongo: AsyncMongoClient[Document],
    browser: Browser,
    kafka_producer: AIOKafkaProducer,
) -> None:
    """The customer signed, their card was declined: the visit appears among those not paid,
    with the reminders sent as they go; when the customer pays with another card, it leaves.
    A visit whose cash was never recorded leaves when operations write it off, with a reason."""
    ids = customer, store, _ = visit_ids()
    board = await operations_board(browser, platform, mongo)
    async with platform.client("payments") as payments:
        receipt = await signed_paying_with(
            payments, kafka_producer, platform, card="pm_card_declined", ids=ids
        )
        row = board.page.locator(f'#unpaid tr[data-receipt="{receipt["receipt_id"]}"]')
        await expect(row).to_be_visible(timeout=LIVE)
        await expect(row).to_contain_text("card: the customer")
        await expect(row).to_contain_text(customer)
        await expect(row).to_contain_text("60.00")
        await expect(row).to_contain_text("card declined by the issuer")
        # Kept apart from the note, so a store is not shown what the bank said (unit tested).
        stored = await mongo[f"{platform.prefix}_gateway"]["board_unpaid"].find_one(
            {"_id": receipt["receipt_id"]}
        )
        assert stored is not None
        assert stored["declined_because"] == "card declined by the issuer"
        await expect(row).to_contain_text("2 sent", timeout=LIVE)  # every 2 s in tests, twice
        await expect(board.page.locator("#unpaid-title")).to_have_text(
            re.compile(r"^Visits not paid: \d+$")
        )
        await board.shot("10-visit-unpaid")

        r = await payments.post(
            f"/receipts/{receipt['receipt_id']}/pay",
            json={"payment_method": "pm_card_ok"},
            headers=as_customer(customer),
        )
        assert r.status_code == 200, r.text
        await expect(row).to_have_count(0, timeout=LIVE)
        today = board.page.locator("#unpaid-today")
        await expect(today).to_have_text(re.compile(r"^Since today began: \d+ paid"))

        # Nobody had a card, and the technician never recorded the cash.
        cash_customer, cash_booking = f"cus_{uuid.uuid4().hex[:8]}", f"bk_{uuid.uuid4().hex[:10]}"
        await publish(
            kafka_producer, platform.prefix, service_completed(cash_booking, cash_customer, store)
        )
        unrecorded = await signed(payments, cash_customer, cash_booking)
        row = board.page.locator(f'#unpaid tr[data-receipt="{unrecorded["receipt_id"]}"]')
        await expect(row).to_contain_text("cash: technician", timeout=LIVE)
        # The button comes once the technician was reminded (payments refuses before).
        await expect(row).to_contain_text(re.compile(r"\d sent"), timeout=LIVE)
        await row.get_by_role(
            "button", name=f"Write off receipt {unrecorded['receipt_id']}"
        ).click()
        dialog = board.page.get_by_role("dialog")
        await expect(dialog).to_contain_text("60.00")
        await dialog.get_by_label("Why the platform gives this money up").fill("store closed down")
        await dialog.get_by_role("button", name="Write off").click()
        await expect(dialog).to_be_hidden(timeout=LIVE)
        await expect(row).to_have_count(0, timeout=LIVE)
        await expect(today).to_contain_text("written off")
        given_up = board.page.locator(f'#written-off tr[data-receipt="{unrecorded["receipt_id"]}"]')
        await expect(given_up).to_contain_text("store closed down", timeout=LIVE)
        await expect(given_up).to_contain_text(cash_customer)
        await board.shot("11-visit-written-off")
        async with platform.client("payments", acting_as=OPS) as as_ops:
            off = await get_json(as_ops, f"/receipts/{unrecorded['receipt_id']}")
        assert off["status"] == "written_off"
        assert off["write_off"]["reason"] == "store closed down"
        assert off["write_off"]["by"].startswith("staff-")  # who signed in to the page

        # The technician turns up with the cash after all: operations take it back.
        await given_up.get_by_role(
            "button", name=f"Reopen receipt {unrecorded['receipt_id']}"
        ).click()
        await expect(dialog).to_contain_text("The booking stays closed")
        await dialog.get_by_label("Why the money is due again").fill("the technician has it")
        await dialog.get_by_role("button", name="Reopen").click()
        await expect(dialog).to_be_hidden(timeout=LIVE)
        await expect(given_up).to_have_count(0, timeout=LIVE)
        await expect(board.page.locator("#written-off")).to_contain_text(
            "Nothing written off today."
        )
        await expect(row).to_contain_text("reopened by operations: due again", timeout=LIVE)
        await board.shot("12-write-off-taken-back")
        await board.assert_never_reloaded_nor_left_the_platform()
    async with platform.client("payments", acting_as=OPS) as payments:
        back = await get_json(payments, f"/receipts/{unrecorded['receipt_id']}")
    assert (back["status"], back["write_off"]) == ("sealed", None)
    [taken_back] = back["reopened"]
    assert taken_back["reason"] == "the technician has it"
    assert taken_back["by"] == off["write_off"]["by"]  # the same operator, signed in
    assert taken_back["write_off"] == off["write_off"]


async def test_operations_record_a_refund_the_card_refused_as_repaid_from_the_page(
    platform: Platform,
    mongo: AsyncMongoClient[Document],
    browser: Browser,
    kafka_producer: AIOKafkaProducer,
) -> None:
    """Two refunds of one visit the card would not take back appear among the refunds owed,
    each on its line; operations record there how one went back instead (a bank transfer
    and its reference), and that one leaves the list while the other stays. Before, the
    visit showed one refund declined, the later one, and recording it cleared both."""
    ids = _, _, booking_id = visit_ids()
    board = await operations_board(browser, platform, mongo)
    async with platform.client("payments") as payments:
        receipt = await signed_paying_with(
            payments, kafka_producer, platform, card="pm_card_refund_fails", ids=ids
        )

        async def settled() -> Any:
            seen = await get_json(payments, f"/receipts/{receipt['receipt_id']}", headers=OPS)
            return seen if seen and seen["status"] == "settled" else None

        await eventually(settled, what="the visit paid")
        refund_ids = []
        for amount in (1000, 500):
            r = await payments.post(
                f"/receipts/{receipt['receipt_id']}/refunds",
                json={"amount": amount, "reason": "late"},
                headers={**OPS, "Idempotency-Key": uuid.uuid4().hex},
            )
            assert r.status_code == 200, r.text
            refund_ids.append(r.json()["refund_id"])

    first, second = (
        board.page.locator(f'#refunds-declined tr[data-refund="{refund_id}"]')
        for refund_id in refund_ids
    )
    await expect(first).to_be_visible(timeout=LIVE)
    await expect(second).to_be_visible(timeout=LIVE)
    await expect(first).to_contain_text("10.00")
    await expect(second).to_contain_text("5.00")
    await board.shot("12-refund-declined")
    name = f"Record refund {refund_ids[0]} of booking {booking_id} repaid"
    await board.record_repaid(first, name, "10.00", "bank_transfer", "TRF-2026-0042")
    await expect(second).to_be_visible()
    await board.shot("13-refund-repaid")
    await board.assert_never_reloaded_nor_left_the_platform()

    async with platform.client("payments", acting_as=OPS) as as_ops:
        seen = await get_json(as_ops, f"/receipts/{receipt['receipt_id']}")
    repaid_of = {r["refund_id"]: [p["repaid"] for p in r["parts"]] for r in seen["refunds"]}
    (repaid,) = repaid_of[refund_ids[0]]
    assert (repaid["way"], repaid["reference"]) == ("bank_transfer", "TRF-2026-0042")
    assert repaid["by"].startswith("staff-")  # who signed in to the page
    assert repaid_of[refund_ids[1]] == [None]  # still owed


async def test_operations_record_a_fee_the_card_would_not_take_back_as_repaid_from_the_page(
    platform: Platform,
    mongo: AsyncMongoClient[Document],
    browser: Browser,
    kafka_producer: AIOKafkaProducer,
) -> None:
    """A late cancellation charged its fee, then the customer signed for the visit done after
    all: the fee goes back to the card, which will not take it. The fee is among those owed
    on operations' page; they record there how it went back instead, and it leaves the list
    as refunded."""
    ids = customer, _, booking_id = visit_ids()
    fee_id = f"fee_{booking_id}"
    path = f"/cancellation-fees/{fee_id}"
    board = await operations_board(browser, platform, mongo)
    async with platform.client("payments") as payments:
        await completed_paying_with(
            payments, kafka_producer, platform, card="pm_card_refund_fails", ids=ids
        )
        await publish(kafka_producer, platform.prefix, cancelled(booking_id, customer, 1000))
        await fee_is(payments, path, as_customer(customer), "paid")
        await signed(payments, customer, booking_id)
        await fee_is(payments, path, as_customer(customer), "refund_declined")

    row = board.page.locator(f'#fees tr[data-fee="{fee_id}"]')
    await expect(row).to_be_visible(timeout=LIVE)
    await expect(row).to_contain_text("10.00")
    await expect(row).to_contain_text("refund declined")
    await board.record_repaid(row, f"Record fee {fee_id} repaid", "10.00", "cash", "CASH-0042")
    await expect(board.page.locator("#fees-today")).to_contain_text("refunded")
    await board.shot("14-fee-refund-repaid")
    await board.assert_never_reloaded_nor_left_the_platform()

    async with platform.client("payments", acting_as=OPS) as as_ops:
        fee = await get_json(as_ops, path)
    assert fee["status"] == "refunded"
    repaid = fee["refund_repaid"]
    assert (repaid["way"], repaid["reference"]) == ("cash", "CASH-0042")
    assert repaid["by"].startswith("staff-")  # who signed in to the page


async def test_operations_call_customers_from_the_call_list_on_the_page(
    platform: Platform, mongo: AsyncMongoClient[Document], browser: Browser
) -> None:
    """A call a week after a larger job, due (booking's clock and timers bring it there:
    tests/test_follow_up.py; here it is put there as due yesterday): operations see who to
    call and their phone, and record the call on the page. A store's board has no call list
    (customers' phones are not theirs)."""
    customer, booking_id = f"cus_{uuid.uuid4().hex[:8]}", f"bk_{uuid.uuid4().hex[:10]}"
    async with platform.client("booking", acting_as=OPS) as booking:
        await seed_customer(booking, customer)
    now = datetime.now(UTC)
    call = FollowUp(
        follow_up_id=f"fu_{booking_id}_call_after_week",
        kind=FollowUpKind.CALL_AFTER_WEEK,
        booking_id=booking_id,
        customer_id=customer,
        region="lisbon",
        services=["Home cleaning, 4 hours"],
        due_at=now - timedelta(days=1),
        status=FollowUpStatus.TO_CALL,
        created_at=now - timedelta(days=8),
    )
    await FollowUps(mongo[f"{platform.prefix}_booking"]).insert(call)

    board = await operations_board(browser, platform, mongo)
    row = board.page.locator(f'#calls tr[data-follow-up="{call.follow_up_id}"]')
    await expect(row).to_be_visible(timeout=LIVE)
    await expect(row).to_contain_text("Ana Ribeiro")
    await expect(row).to_contain_text("+351912345678")
    await expect(row).to_contain_text("Home cleaning, 4 hours")
    await expect(board.page.locator("#calls-title")).to_have_text(
        re.compile(r"^Calls to make: \d+$")
    )
    await board.shot("14-call-due")
    await row.get_by_role(
        "button", name=f"Record the call to Ana Ribeiro about booking {booking_id}"
    ).click()
    dialog = board.page.get_by_role("dialog")
    await dialog.get_by_label("How it went").select_option("no_answer")
    await dialog.get_by_label("Note").fill("voicemail, left a message")
    await dialog.get_by_role("button", name="Record call").click()
    await expect(dialog).to_be_hidden(timeout=LIVE)
    await expect(row).to_have_count(0, timeout=LIVE)  # back tomorrow
    await board.assert_never_reloaded_nor_left_the_platform()

    stored = await FollowUps(mongo[f"{platform.prefix}_booking"]).get(call.follow_up_id)
    assert stored is not None
    assert stored.status is FollowUpStatus.TO_CALL
    assert [(c.outcome.value, c.note) for c in stored.calls] == [
        ("no_answer", "voicemail, left a message")
    ]
    assert stored.calls[0].by.startswith("staff-")  # who signed in to the page
    assert stored.due_at > now

    store_board = Dashboard(
        await browser.new_page(viewport={"width": 1280, "height": 1400}), platform.url("gateway")
    )
    await store_board.sign_in(*(await staff(mongo, platform.prefix, "store_chiado")).split())
    await expect(store_board.page.locator("#calls-section")).to_be_hidden()
    await store_board.page.wait_for_timeout(1000)  # time enough for a wrong request to go
    assert not [u for u in store_board.requests if "/v1/follow-ups/calls" in u]
    async with platform.client("gateway") as api:
        key = await gateway_token(
            mongo, platform.prefix, Actor(role=Role.STORE, subject="s@x", store_id="store_chiado")
        )
        refused = await api.get("/v1/follow-ups/calls", headers=bearer(key))
    assert refused.status_code == 403


async def test_operations_and_the_store_see_what_a_customer_took_off_a_receipt(
    platform: Platform,
    mongo: AsyncMongoClient[Document],
    browser: Browser,
    kafka_producer: AIOKafkaProducer,
) -> None:
    """A customer takes a manicure they did not get off the receipt before signing: it is on
    operations' page and on the page of the technician's store, not on another store's."""
    customer, tech = f"cus_{uuid.uuid4().hex[:8]}", f"tech_{uuid.uuid4().hex[:8]}"
    booking_id = f"bk_{uuid.uuid4().hex[:10]}"
    manicures = PricedLine(
        code="nails.manicure",
        name="Manicure",
        skill="nails",
        quantity=3,
        unit_price=2500,
        currency="EUR",
    )
    await publish(
        kafka_producer,
        platform.prefix,
        service_completed(
            booking_id, customer, "store_chiado", technician_id=tech, lines=[manicures]
        ),
    )
    async with platform.client("payments") as payments:
        shown = await issued(payments, booking_id, customer)
        taken = await take_off(payments, shown, customer, ("nails.manicure", 1, "not_done"))
        assert taken.status_code == 200, taken.text
    receipt_row = f'#disputes tr[data-receipt="{shown["receipt_id"]}"]'

    board = await operations_board(browser, platform, mongo)
    row = board.page.locator(receipt_row)
    await expect(row).to_be_visible(timeout=LIVE)
    await expect(row).to_contain_text(booking_id)
    await expect(row).to_contain_text(tech)
    cells = row.locator("td")
    await expect(cells.nth(2)).to_have_text("1 x Manicure (not done)")
    await expect(cells.nth(3)).to_contain_text("25.00")  # what was taken off
    await expect(cells.nth(4)).to_contain_text("50.00")  # the receipt now
    await expect(cells.nth(4)).to_contain_text("issued")  # not signed yet
    await board.shot("15-taken-off-a-receipt")

    # The customer complains of the manicure too: the complaint says what was taken off, and
    # so does the dialog operations propose a remedy from (a refund of it would pay twice).
    async with platform.client("reviews") as reviews:
        await known(reviews, booking_id)
        filed = await reviews.post(
            "/complaints",
            json={
                "booking_id": booking_id,
                "category": "quality",
                "description": "one manicure was never done",
            },
            headers=as_customer(customer),
        )
        assert filed.status_code == 201, filed.text
    complaint_id = filed.json()["complaint_id"]
    complaint = board.page.locator(f'#complaints tr[data-complaint="{complaint_id}"]')
    await expect(complaint.locator("[data-taken-off]")).to_have_text(
        re.compile(
            r"^\D*25[.,]00\D* taken off the receipt, not charged: 1 x Manicure \(not done\)$"
        ),
        timeout=LIVE,
    )
    await complaint.get_by_role(
        "button", name=f"Propose a remedy for complaint {complaint_id}"
    ).click()
    dialog = board.page.get_by_role("dialog")
    await expect(dialog.locator("[data-taken-off]")).to_contain_text("do not refund it again")
    await expect(dialog.locator("[data-taken-off]")).to_contain_text("1 x Manicure (not done)")
    await board.shot("16-complaint-with-a-receipt-disputed")
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(dialog).to_be_hidden()
    await board.assert_never_reloaded_nor_left_the_platform()

    for store, shown_there in (("store_chiado", 1), ("store_belem", 0)):
        page = Dashboard(
            await browser.new_page(viewport={"width": 1280, "height": 1400}),
            platform.url("gateway"),
        )
        await page.sign_in(*(await staff(mongo, platform.prefix, store)).split())
        await expect(page.page.locator("#disputes tbody tr").first).to_be_visible(timeout=LIVE)
        await expect(page.page.locator(receipt_row)).to_have_count(shown_there)


async def test_operations_close_a_stores_week_from_the_page_and_the_store_sees_it_closed(
    platform: Platform, mongo: AsyncMongoClient[Document], browser: Browser
) -> None:
    """A store's week two weeks back, over and due: operations see what it took in and who
    pays whom, close it by a transfer from the page, and the store's own page shows it
    closed; another store's page does not show it."""
    store = f"store_{uuid.uuid4().hex[:8]}"
    week = week_before(week_before(week_of(datetime.now(UTC))))
    entered_at = week_start(week) + timedelta(days=3)
    # Ten weeks back, a week still due: older than the weeks shown, shown for being due.
    old_week = week_of(week_start(week) - timedelta(weeks=8))
    moved = [  # 25.00 cash in the store's hand
        ("card", 5000, 0, week, entered_at),
        ("cash", 2500, 2500, week, entered_at),
        ("card", 2000, 0, old_week, entered_at - timedelta(weeks=8)),
    ]
    payments_db = mongo[f"{platform.prefix}_payments"]
    await payments_db["settlement_entries"].insert_many(
        [
            {
                "_id": f"rc_{store}_{n}:paid:0",
                "store_id": store,
                "receipt_id": f"rc_{store}_{n}",
                "booking_id": f"bk_{store}_{n}",
                "technician_id": "tech_s",
                "currency": "EUR",
                "kind": kind,
                "takings": takings,
                "held": held,
                "at": at,
                "week": in_week,
                "entered_at": at,
            }
            for n, (kind, takings, held, in_week, at) in enumerate(moved)
        ]
    )
    # Entered before payments kept those weeks, as by a release before weeks were kept:
    # kept at its next start (weeks over are kept once, as they read).
    await payments_db["settlements"].delete_one({"_id": "kept_through"})
    await schedule(payments_db, None, KEEP_WEEKS, "start", datetime.now(UTC))
    await eventually(
        lambda: payments_db["settlements"].find_one({"_id": f"{store}:{old_week}:EUR"}),
        what="the older week kept",
    )
    board = await operations_board(browser, platform, mongo)
    older = board.page.locator(f'#settlements tr[data-statement="{store}:{old_week}:EUR"]')
    await expect(older.locator("[data-status]")).to_have_text("due", timeout=LIVE)
    row = board.page.locator(f'#settlements tr[data-statement="{store}:{week}:EUR"]')
    await expect(row).to_be_visible(timeout=LIVE)
    # 75.00 in, 11.25 the platform's, 25.00 held already: 38.75 to the store.
    await expect(row.locator("[data-payable]")).to_have_text(re.compile(r"38[.,]75.* to the store"))
    await expect(row.locator("[data-status]")).to_have_text("due")
    await row.get_by_role("button", name=f"Close {store}'s week {week}").click()
    dialog = board.page.get_by_role("dialog")
    await expect(dialog).to_contain_text("2 visits with money moving took in")
    await dialog.get_by_label("Reference").fill("TR-2026-0042")
    await board.shot("17-settlement-closing")
    await dialog.get_by_role("button", name="Close the week").click()
    await expect(dialog).to_be_hidden(timeout=LIVE)
    await expect(row.locator("[data-status]")).to_have_text("closed: TR-2026-0042", timeout=LIVE)
    await expect(row.get_by_role("button")).to_have_count(0)
    await board.assert_never_reloaded_nor_left_the_platform()

    for viewer, shown_there in ((store, 1), ("store_belem", 0)):
        page = Dashboard(
            await browser.new_page(viewport={"width": 1280, "height": 1400}),
            platform.url("gateway"),
        )
        await page.sign_in(*(await staff(mongo, platform.prefix, viewer)).split())
        await expect(page.page.locator("#settlements tbody tr").first).to_be_visible(timeout=LIVE)
        theirs = page.page.locator(f'#settlements tr[data-statement="{store}:{week}:EUR"]')
        await expect(theirs).to_have_count(shown_there)
        if shown_there:
            await expect(theirs.locator("[data-status]")).to_have_text("closed: TR-2026-0042")
            await expect(theirs.get_by_role("button")).to_have_count(0)  # operations close


async def test_operations_see_a_region_the_platform_loses_money_on_and_who_the_technician_is(
    platform: Platform, mongo: AsyncMongoClient[Document], browser: Browser
) -> None:
    """A region whose visit this week was paid mostly by the platform's coupon: operations'
    margins show it losing, in red, by region and by technician; a store's page has no
    margins at all."""
    region, technician = f"region_{uuid.uuid4().hex[:8]}", f"tech_{uuid.uuid4().hex[:8]}"
    store = f"store_{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    moved = [("card", 1000), ("coupon", 9000)]  # 100.00 taken in, 90.00 of it the coupon
    await mongo[f"{platform.prefix}_payments"]["settlement_entries"].insert_many(
        [
            {
                "_id": f"rc_{store}:{kind}:0",
                "store_id": store,
                "receipt_id": f"rc_{store}",
                "booking_id": f"bk_{store}",
                "technician_id": technician,
                "region": region,
                "currency": "EUR",
                "kind": kind,
                "takings": takings,
                "held": 0,
                "at": now,
                "week": week_of(now),
                "entered_at": now,
            }
            for kind, takings in moved
        ]
    )
    board = await operations_board(browser, platform, mongo)
    section = board.page.locator("#margins-section")
    await expect(section).to_be_visible(timeout=LIVE)
    # 15.00 commission less the 90.00 coupon: the platform lost 75.00 there this week.
    row = board.page.locator(f'#margins tr[data-margin="{region}"]')
    this_week = row.locator(f'td[data-week="{week_of(now)}"]')
    await expect(this_week).to_have_text(re.compile(r"-?75[.,]00"), timeout=LIVE)
    await expect(this_week).to_have_attribute("data-net", "-7500")
    await expect(this_week).to_have_class("loss")
    await expect(this_week).to_have_attribute("title", re.compile(r"coupons .*90[.,]00"))
    await board.shot("18-margins")
    await board.page.get_by_label("Margins by", exact=True).select_option("technician")
    theirs = board.page.locator(f'#margins tr[data-margin="{technician}"]')
    await expect(theirs.locator(f'td[data-week="{week_of(now)}"]')).to_have_attribute(
        "data-net", "-7500", timeout=LIVE
    )
    await expect(board.page.locator("#margins-key")).to_have_text("Technician")
    await board.assert_never_reloaded_nor_left_the_platform()

    page = Dashboard(
        await browser.new_page(viewport={"width": 1280, "height": 1400}),
        platform.url("gateway"),
    )
    await page.sign_in(*(await staff(mongo, platform.prefix, "store_belem")).split())
    await expect(page.page.locator("#settlements-section")).to_be_visible(timeout=LIVE)
    await expect(page.page.locator("#margins-section")).to_be_hidden()
