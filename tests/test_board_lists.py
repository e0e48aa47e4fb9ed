"""The operations board's lists hold their first rows only (GATEWAY_BOARD_ROWS): a longer
list says how long it is, so a count on the page is never quietly a cap."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, expect
from pymongo import AsyncMongoClient

from services.gateway.board import cursor as board_cursor
from shared.auth import Actor, Role
from shared.mongo import Document
from shared.time import utcnow
from tests.harness import Infra, ServiceProcess, new_prefix
from tests.seed import bearer, gateway_token
from tests.test_dashboard import LIVE, Dashboard, browser, staff

__all__ = ["browser"]  # the Chromium fixture, shared with the dashboard's tests

pytestmark = pytest.mark.integration


def unpaid(n: int, store: str, hours_ago: int) -> Document:
    return {
        "_id": f"rc_{store}_{n}",
        "booking_id": f"bk_{store}_{n}",
        "customer_id": f"cus_{n}",
        "technician_id": f"tech_{store}",
        "store_id": store,
        "amount": 2500,
        "currency": "EUR",
        "way": "cash",
        "status": "due",
        "due_since": utcnow() - timedelta(hours=hours_ago),
        "reminders": 0,
        "rev": 1,
    }


async def test_a_list_longer_than_the_board_shows_says_how_long_it_is(
    infra: Infra, mongo: AsyncMongoClient[Document], browser: Browser
) -> None:
    prefix = new_prefix()
    gateway = ServiceProcess("gateway", infra, prefix, extra_env={"GATEWAY_BOARD_ROWS": "2"})
    gateway.start()
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as api:
            (await api.get("/v1/auth/keys")).raise_for_status()  # its first signing key
        # The projection's rows as the gateway's consumer keeps them: three visits of one
        # store, one of another, all unpaid.
        gateway_db = mongo[f"{prefix}_gateway"]
        await gateway_db["board_unpaid"].insert_many(
            [unpaid(n, "store_a", hours_ago=10 - n) for n in range(3)]
            + [unpaid(9, "store_b", hours_ago=1)]
        )
        # And three visits booked in the last minutes, one already signed.
        now = utcnow()
        await gateway_db["board_bookings"].insert_many(
            [
                {
                    "_id": f"bk_{n}",
                    "status": "requested",
                    "requested_at": now - timedelta(minutes=n),
                    "active_at": now - timedelta(minutes=n),
                }
                for n in (1, 2, 3)
            ]
        )
        await gateway_db["board_bookings"].update_one(
            {"_id": "bk_3"},
            {"$set": {"status": "closed", "receipt_signed_at": now, "receipt_total": 4500}},
        )

        async def read(actor: Actor, path: str = "/v1/board", **params: Any) -> httpx.Response:
            token = await gateway_token(mongo, prefix, actor)
            # "Today" began an hour ago, whatever the time of day the test runs.
            since = (utcnow() - timedelta(hours=1)).isoformat()
            async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as api:
                return await api.get(path, params={"since": since, **params}, headers=bearer(token))

        async def board(actor: Actor) -> Any:
            seen = await read(actor)
            assert seen.status_code == 200, seen.text
            return seen.json()

        ops_staff = Actor(role=Role.OPS, subject="ops@x")
        ops = await board(ops_staff)
        # The two longest due, and the whole list's length.
        assert [r["receipt_id"] for r in ops["unpaid"]] == ["rc_store_a_0", "rc_store_a_1"]
        assert ops["cut"] == {"unpaid": 4, "bookings": 3}
        assert set(ops["more"]) == {"unpaid", "bookings"}  # where each cut list goes on
        # Today's figures count every row of the day, not the rows the list holds.
        assert len(ops["bookings"]) == 2
        assert (ops["figures"]["bookings"], ops["figures"]["receipts_signed"]) == (3, 1)

        # The rest of a list, a page at a time after the last row shown, in the same order:
        # no gap, no row twice.
        rest = (await read(ops_staff, "/v1/board/unpaid", after=ops["more"]["unpaid"])).json()
        assert [r["receipt_id"] for r in rest["rows"]] == ["rc_store_a_2", "rc_store_b_9"]
        assert (rest["total"], rest["next_after"]) == (4, None)
        first = (await read(ops_staff, "/v1/board/bookings", limit=1)).json()
        assert [r["booking_id"] for r in first["rows"]] == ["bk_1"]
        # A booking made meanwhile goes to the top of the list: the next page still starts
        # after the row shown last (a page by position would show bk_1 again).
        await gateway_db["board_bookings"].insert_one(
            {"_id": "bk_0", "status": "requested", "requested_at": now, "active_at": now}
        )
        after_first = {"limit": 1, "after": first["next_after"]}
        second = (await read(ops_staff, "/v1/board/bookings", **after_first)).json()
        assert ([r["booking_id"] for r in second["rows"]], second["total"]) == (["bk_2"], 4)
        after_second = {"limit": 1, "after": second["next_after"]}
        last = (await read(ops_staff, "/v1/board/bookings", **after_second)).json()
        assert ([r["booking_id"] for r in last["rows"]], last["next_after"]) == (["bk_3"], None)
        # A page is never longer than the board's, and a bad page says why.
        too_long = await read(ops_staff, "/v1/board/unpaid", limit=3)
        assert too_long.status_code == 422, too_long.text
        assert "at most 2" in too_long.text
        forged = await read(ops_staff, "/v1/board/unpaid", after="rc_store_a_1")
        assert forged.status_code == 422, forged.text
        assert "not a cursor this list gave" in forged.text

        # A store's list is its own: three rows, two shown, and nothing of the other store.
        store_staff = Actor(role=Role.STORE, subject="s@x", store_id="store_a")
        store = await board(store_staff)
        assert len(store["unpaid"]) == 2
        assert store["cut"] == {"unpaid": 3}
        theirs = (await read(store_staff, "/v1/board/unpaid", after=store["more"]["unpaid"])).json()
        assert [r["receipt_id"] for r in theirs["rows"]] == ["rc_store_a_2"]
        assert theirs["rows"][0]["customer_id"] is None  # a store never sees who the customer is
        assert (theirs["total"], theirs["next_after"]) == (3, None)
        # A cursor made up to start at another store's row pages through this store's rows
        # all the same: it is a place in the order, not a way to see that row.
        made_up = board_cursor(utcnow() - timedelta(hours=20), "rc_store_b_9")
        mine = (await read(store_staff, "/v1/board/unpaid", after=made_up)).json()
        assert [r["receipt_id"] for r in mine["rows"]] == ["rc_store_a_0", "rc_store_a_1"]
        fees = await read(store_staff, "/v1/board/fees")
        assert (fees.status_code, fees.json()["rows"]) == (200, [])  # operations' alone
        other = await board(Actor(role=Role.STORE, subject="s@y", store_id="store_b"))
        assert [r["receipt_id"] for r in other["unpaid"]] == ["rc_store_b_9"]
        assert other["cut"] == {}  # it fits: nothing said, nothing counted

        # The page says so above the lists.
        email, password = (await staff(mongo, prefix)).split()
        page = Dashboard(await browser.new_page(), gateway.url)
        await page.sign_in(email, password)
        await expect(page.page.get_by_role("note")).to_contain_text(
            "visits not paid or closed today 4 (the first 2 shown)", timeout=LIVE
        )
        # Its count is not quietly the cap.
        await expect(page.page.locator("#unpaid-title")).to_have_text("Visits not paid: 2+")
        # And the rest is a click away.
        await page.page.get_by_role("button", name="Show more visits not paid").click()
        await expect(page.page.locator("#unpaid-title")).to_have_text("Visits not paid: 4")
        await expect(page.page.get_by_role("note")).not_to_contain_text("visits not paid")
        await page.shot("board-cut-short")
    finally:
        gateway.stop()
