"""How long a sign-in lasts, on a real gateway: refreshing keeps it going only up to its
end (90 days for customers and technicians, 12 hours for staff); resetting a staff
password or removing the account ends that account's sign-ins, access tokens included, and
so does a store taking back its technician's sign-in or registering another phone; a live
stream lasts as long as the access token that opened it.

One gateway for the module, with a clock the tests move (POST /testing/clock) and access
tokens that last 3 s, and dispatch behind it (registering a technician's phone asks it)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from deploy.local.demo_data import technician_file
from services.gateway import signin
from services.gateway.security import STAFF_SIGN_IN_ENDED, TECHNICIAN_SIGN_IN_ENDED
from services.gateway.signin import CodeIn, add_staff, remove_staff
from services.gateway.storage import (
    LEGACY_ENROLMENT,
    MIGRATIONS,
    NONE_ISSUED,
    Accounts,
    unproven_technician_phones,
)
from shared.errors import Conflict
from shared.mongo import Document
from tests.harness import ROOT, Infra, ServiceProcess, new_prefix
from tests.seed import bearer
from tests.test_gateway_auth import code_for, file_technician, phone, sign_in

pytestmark = pytest.mark.integration

ENDED = "this sign-in has reached its end; sign in again"
DAY = 86400


@pytest.fixture(scope="module")
def gateway(infra: Infra) -> Iterator[ServiceProcess]:
    prefix = new_prefix()
    dispatch = ServiceProcess("dispatch", infra, prefix)
    edge = ServiceProcess(
        "gateway",
        infra,
        prefix,
        extra_env={
            "DOORSTEP_TEST_CLOCK": "1",
            "GATEWAY_ACCESS_TOKEN_TTL_S": "3",
            "GATEWAY_SIGNIN_BURST": "1000",
            "GATEWAY_SMS_PER_NETWORK": "3",  # IPv6 sites only: these tests ask from 127.0.0.1
            "DISPATCH_URL": dispatch.url,
        },
    )
    dispatch.start()
    try:
        edge.start()
        try:
            yield edge
        finally:
            edge.stop()
    finally:
        dispatch.stop()


@pytest.fixture
async def api(gateway: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        yield client


def staff_db(mongo: AsyncMongoClient[Document], gateway: ServiceProcess) -> Any:
    return mongo[f"{gateway.prefix}_gateway"]


async def signed_in_staff(
    api: httpx.AsyncClient, mongo: AsyncMongoClient[Document], gateway: ServiceProcess
) -> tuple[str, str, dict[str, Any]]:
    """A new operations account (e-mail, password) and a sign-in of it."""
    email, password = f"ops-{uuid.uuid4().hex[:6]}@doorstep.test", uuid.uuid4().hex
    await add_staff(staff_db(mongo, gateway), email, password)
    return email, password, await staff_sign_in(api, email, password)


async def later(api: httpx.AsyncClient, seconds: float) -> None:
    moved = await api.post("/testing/clock", json={"advance_s": seconds})
    assert moved.status_code == 200, moved.text


async def refreshed(api: httpx.AsyncClient, tokens: dict[str, Any]) -> httpx.Response:
    return await api.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})


async def staff_sign_in(api: httpx.AsyncClient, email: str, password: str) -> dict[str, Any]:
    r = await api.post("/v1/auth/ops", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_a_customers_sign_in_ends_90_days_after_it_began_however_often_refreshed(
    api: httpx.AsyncClient,
) -> None:
    tokens = await sign_in(api, phone())
    for _ in range(3):  # days 29, 58 and 87: each refresh well within the token's 30 days
        await later(api, 29 * DAY)
        r = await refreshed(api, tokens)
        assert r.status_code == 200, r.text
        tokens = r.json()
    await later(api, 3 * DAY + 1)
    ended = await refreshed(api, tokens)
    assert ended.status_code == 401, ended.text
    assert ended.json()["error"]["message"] == ENDED
    # A new sign-in starts a new 90 days.
    again = await sign_in(api, phone())
    assert (await refreshed(api, again)).status_code == 200


async def test_a_staff_sign_in_ends_after_12_hours(
    api: httpx.AsyncClient, gateway: ServiceProcess, mongo: AsyncMongoClient[Document]
) -> None:
    _, _, tokens = await signed_in_staff(api, mongo, gateway)
    await later(api, 11 * 3600)
    r = await refreshed(api, tokens)
    assert r.status_code == 200, r.text
    await later(api, 3600 + 1)
    ended = await refreshed(api, r.json())
    assert ended.status_code == 401, ended.text
    assert ended.json()["error"]["message"] == ENDED


async def test_resetting_a_staff_password_ends_that_accounts_sign_ins_only(
    api: httpx.AsyncClient, gateway: ServiceProcess, mongo: AsyncMongoClient[Document]
) -> None:
    db = staff_db(mongo, gateway)
    email, other = (f"{who}-{uuid.uuid4().hex[:6]}@doorstep.test" for who in ("ops", "chiado"))
    await add_staff(db, email, "old-password-1")
    await add_staff(db, other, "other-password", store_id="store_chiado")
    mine = [await staff_sign_in(api, email, "old-password-1") for _ in range(2)]
    theirs = await staff_sign_in(api, other, "other-password")
    customer = await sign_in(api, phone())

    await add_staff(db, email, "new-password-2")

    for tokens in mine:
        r = await refreshed(api, tokens)
        assert r.status_code == 401, r.text
    old = await api.post("/v1/auth/ops", json={"email": email, "password": "old-password-1"})
    assert old.status_code == 401
    assert (await refreshed(api, theirs)).status_code == 200
    assert (await refreshed(api, customer)).status_code == 200
    await staff_sign_in(api, email, "new-password-2")


async def test_removing_a_staff_account_with_the_command_ends_its_sign_ins(
    api: httpx.AsyncClient, gateway: ServiceProcess, mongo: AsyncMongoClient[Document]
) -> None:
    email, password, tokens = await signed_in_staff(api, mongo, gateway)
    env = {**os.environ, **gateway.env()}
    command = [sys.executable, "-m", "services.gateway.staff", "remove", email.upper()]
    done = await asyncio.to_thread(
        subprocess.run, command, cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "removed" in done.stdout
    assert (await refreshed(api, tokens)).status_code == 401
    gone = await api.post("/v1/auth/ops", json={"email": email, "password": password})
    assert gone.status_code == 401
    again = await asyncio.to_thread(
        subprocess.run, command, cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert again.returncode == 1
    assert "no such staff account" in again.stdout


async def test_a_reset_or_removed_staff_members_access_token_stops_working_at_once(
    api: httpx.AsyncClient, gateway: ServiceProcess, mongo: AsyncMongoClient[Document]
) -> None:
    """Ending the sign-ins revokes their refresh tokens; the access tokens already out used
    to work on until they expired (15 minutes), board and streams included."""
    db = staff_db(mongo, gateway)
    email, _, tokens = await signed_in_staff(api, mongo, gateway)
    _, _, colleague = await signed_in_staff(api, mongo, gateway)

    async def board(tokens: dict[str, Any]) -> httpx.Response:
        return await api.get("/v1/board", headers=bearer(tokens["access_token"]))

    assert (await board(tokens)).status_code == 200
    await add_staff(db, email, "a-new-password-3")
    reset = await board(tokens)
    assert reset.status_code == 401, reset.text
    assert reset.json()["error"]["message"] == STAFF_SIGN_IN_ENDED
    assert (await board(colleague)).status_code == 200  # nobody else's

    again = await staff_sign_in(api, email, "a-new-password-3")
    assert (await board(again)).status_code == 200
    assert await remove_staff(db, email)
    removed = await board(again)
    assert removed.status_code == 401, removed.text
    assert removed.json()["error"]["message"] == STAFF_SIGN_IN_ENDED


async def store_keys(
    api: httpx.AsyncClient, ops: dict[str, Any], *stores: str
) -> list[dict[str, str]]:
    """A writing API key of each store, made by operations."""
    keys = []
    for store in stores:
        made = await api.post(
            f"/v1/stores/{store}/api-keys",
            json={"scopes": ["read", "write"]},
            headers=bearer(ops["access_token"]),
        )
        assert made.status_code == 201, made.text
        keys.append({"X-Api-Key": made.json()["api_key"]})
    return keys


async def technician_of(
    api: httpx.AsyncClient, store: str, headers: dict[str, str], tech_id: str | None = None
) -> tuple[str, str, str]:
    """A technician filed with dispatch as the store's, their phone registered: (id, phone,
    the enrolment code their first sign-in on it needs)."""
    tech_id, number = tech_id or f"tech_k{uuid.uuid4().hex[:6]}", phone()
    await file_technician(api, tech_id, store, headers)
    register = {"technician_id": tech_id, "phone": number, "store_id": store}
    made = await api.post("/v1/technician-accounts", json=register, headers=headers)
    assert made.status_code == 201, made.text
    return tech_id, number, made.json()["enrolment_code"]


async def refiled_at(api: httpx.AsyncClient, ops: dict[str, Any], tech_id: str, store: str) -> None:
    """Operations move the technician's file to `store` (dispatch's record of whose they are)."""
    badge = f"K-{uuid.uuid4().int % 10**6:06d}"
    refiled = await api.put(
        f"/v1/technicians/{tech_id}",
        json=technician_file((tech_id, "Kim Store", badge, store, ["nails"], 38.72, -9.14)),
        headers=bearer(ops["access_token"]),
    )
    assert refiled.status_code == 200, refiled.text


async def my_notifications(api: httpx.AsyncClient, tokens: dict[str, Any]) -> httpx.Response:
    return await api.get("/v1/notifications", headers=bearer(tokens["access_token"]))


def ended_for_technician(r: httpx.Response) -> bool:
    return r.status_code == 401 and r.json()["error"]["message"] == TECHNICIAN_SIGN_IN_ENDED


async def test_a_store_takes_back_its_technicians_sign_in_and_no_other_stores(
    api: httpx.AsyncClient, gateway: ServiceProcess, mongo: AsyncMongoClient[Document]
) -> None:
    """A technician who left the store kept their sign-in: nothing took it back, a refresh
    token kept it going for 90 days, and an access token already out worked on for up to 15
    minutes (offers, customers' addresses)."""
    db = staff_db(mongo, gateway)
    store, rival = (f"store_{uuid.uuid4().hex[:6]}" for _ in range(2))
    _, _, ops = await signed_in_staff(api, mongo, gateway)
    as_store, as_rival = await store_keys(api, ops, store, rival)
    tech_id, number, enrolment = await technician_of(api, store, as_store)
    _, colleague_phone, colleagues = await technician_of(api, store, as_store)
    colleague = await sign_in(api, colleague_phone, colleagues)
    tech = await sign_in(api, number, enrolment)
    assert (tech["role"], tech["subject"]) == ("technician", tech_id)
    assert (await my_notifications(api, tech)).status_code == 200

    path = f"/v1/technician-accounts/{tech_id}"
    refused = await api.delete(path, headers=as_rival)
    assert refused.status_code == 403, refused.text
    assert (await my_notifications(api, tech)).status_code == 200  # nothing changed
    assert (await api.delete(path, headers=as_store)).status_code == 204
    assert ended_for_technician(await my_notifications(api, tech))  # at once, not in 15 min
    assert (await api.delete(path, headers=as_store)).status_code == 404

    ended = await refreshed(api, tech)
    assert ended.status_code == 401, ended.text
    assert await Accounts(db).col.find_one({"subject": tech_id}) is None  # the phone is nobody's
    assert (await my_notifications(api, colleague)).status_code == 200  # nobody else's


async def test_a_technicians_new_phone_or_new_store_ends_the_sign_ins_before_it(
    api: httpx.AsyncClient, gateway: ServiceProcess, mongo: AsyncMongoClient[Document]
) -> None:
    """A lost phone: the store registers the new one, and whoever holds the old one is
    signed out (before, the unique technician index answered 500). A technician moving
    stores: their sign-in as the store they left ends. The same registration again changes
    nothing."""
    db = staff_db(mongo, gateway)
    store, other = (f"store_{uuid.uuid4().hex[:6]}" for _ in range(2))
    _, _, ops = await signed_in_staff(api, mongo, gateway)
    as_store, as_other = await store_keys(api, ops, store, other)
    tech_id, lost, enrolment = await technician_of(api, store, as_store)
    on_lost = await sign_in(api, lost, enrolment)

    new_phone = phone()
    again = {"technician_id": tech_id, "phone": new_phone, "store_id": store}
    moved = await api.post("/v1/technician-accounts", json=again, headers=as_store)
    assert moved.status_code == 201, moved.text
    assert ended_for_technician(await my_notifications(api, on_lost))
    assert (await refreshed(api, on_lost)).status_code == 401
    assert await Accounts(db).get(lost) is None
    # The new phone, like any not yet signed in on, needs the store's code too.
    assert (await api.post("/v1/auth/otp", json={"phone": new_phone})).status_code == 202
    bare = {"phone": new_phone, "code": await code_for(api, new_phone)}
    assert refused_with(await api.post("/v1/auth/token", json=bare), "needs the enrolment code")
    on_new = await sign_in(api, new_phone, moved.json()["enrolment_code"])
    assert (on_new["role"], on_new["subject"]) == ("technician", tech_id)

    same = await api.post("/v1/technician-accounts", json=again, headers=as_store)
    assert same.status_code == 201, same.text
    assert same.json()["enrolment_code"] is None  # signed in on this phone already
    assert (await my_notifications(api, on_new)).status_code == 200  # still signed in

    # Operations move them to the other store, which registers the same phone.
    await refiled_at(api, ops, tech_id, other)
    taken_on = await api.post(
        "/v1/technician-accounts", json={**again, "store_id": other}, headers=as_other
    )
    assert taken_on.status_code == 201, taken_on.text
    assert taken_on.json()["enrolment_code"] is None  # the phone was proven theirs
    assert ended_for_technician(await my_notifications(api, on_new))
    assert (await refreshed(api, on_new)).status_code == 401
    account = await Accounts(db).get(new_phone)
    assert account is not None
    assert account.store_id == other
    assert (await my_notifications(api, await sign_in(api, new_phone))).status_code == 200


async def enrolling(
    api: httpx.AsyncClient, number: str, enrolment_code: str | None
) -> httpx.Response:
    """A sign-in on the phone with a fresh one-time code and this enrolment code, an hour
    after the last (each wrong enrolment code uses up a one-time code, and a phone is sent
    five an hour from one address)."""
    await later(api, 3600)
    sent = await api.post("/v1/auth/otp", json={"phone": number})
    assert sent.status_code == 202, sent.text
    body = {"phone": number, "code": await code_for(api, number)}
    if enrolment_code is not None:
        body["enrolment_code"] = enrolment_code
    return await api.post("/v1/auth/token", json=body)


def refused_with(r: httpx.Response, words: str) -> bool:
    return r.status_code == 401 and words in r.json()["error"]["message"]


def another_code(code: str) -> str:
    """A well-formed enrolment code that is not `code`."""
    return "AAAA-AAAA" if code != "AAAA-AAAA" else "BBBB-BBBB"


async def test_a_technicians_first_sign_in_on_a_phone_needs_the_code_their_store_was_given(
    api: httpx.AsyncClient, gateway: ServiceProcess, mongo: AsyncMongoClient[Document]
) -> None:
    """A number the store mistyped made whoever owns it the technician (their offers, the
    customers' addresses) at the first sign-in. Now that sign-in also needs the enrolment
    code the store was shown when it registered the phone."""
    db = staff_db(mongo, gateway)
    store = f"store_{uuid.uuid4().hex[:6]}"
    _, _, ops = await signed_in_staff(api, mongo, gateway)
    (as_store,) = await store_keys(api, ops, store)
    tech_id, number, enrolment = await technician_of(api, store, as_store)
    stored = await Accounts(db).get(number)
    assert stored is not None
    assert stored.enrolment is not None
    assert enrolment.replace("-", "") not in str(stored.model_dump())  # a keyed digest only

    # The phone's own code alone (its owner may not be the technician): refused, and the
    # code is not used up, so the technician can send it again with the enrolment code.
    sent = await api.post("/v1/auth/otp", json={"phone": number})
    assert sent.status_code == 202, sent.text
    code = await code_for(api, number)
    bare = await api.post("/v1/auth/token", json={"phone": number, "code": code})
    assert refused_with(bare, "needs the enrolment code"), bare.text
    # A wrong enrolment code: refused, and that one-time code is used up.
    wrong = {"phone": number, "code": code, "enrolment_code": another_code(enrolment)}
    assert refused_with(await api.post("/v1/auth/token", json=wrong), "4 tries left")
    right = {"phone": number, "code": code, "enrolment_code": enrolment}
    assert refused_with(await api.post("/v1/auth/token", json=right), "no valid code")

    # With a new one-time code and the store's code, typed in any case, without its dash.
    first = await enrolling(api, number, enrolment.replace("-", "").lower())
    assert first.status_code == 200, first.text
    assert (first.json()["role"], first.json()["subject"]) == ("technician", tech_id)
    assert (await my_notifications(api, first.json())).status_code == 200
    # Signed in on this phone once: the phone alone signs them in from now on.
    later_on = await enrolling(api, number, None)
    assert later_on.status_code == 200, later_on.text
    assert later_on.json()["subject"] == tech_id
    enrolled = await Accounts(db).get(number)
    assert enrolled is not None
    assert (enrolled.enrolment, enrolled.enrol_by) == (None, None)


async def test_a_phone_registered_before_enrolment_codes_and_never_signed_in_waits_for_one(
    api: httpx.AsyncClient, gateway: ServiceProcess, mongo: AsyncMongoClient[Document]
) -> None:
    """Phones registered before enrolment codes stored none, as if signed in on since: a
    number the store mistyped still made its owner the technician. Once, at the gateway's
    start, such a phone with no sign-in on record for its registration waits for a code its
    store draws by registering it again: one never used, and the new phone of a technician
    who signed in on the one it replaced. One signed in on goes on as before, and so does a
    phone enrolled with a code since, however long ago its last sign-in."""
    db = staff_db(mongo, gateway)
    store = f"store_{uuid.uuid4().hex[:6]}"
    _, _, ops = await signed_in_staff(api, mongo, gateway)
    (as_store,) = await store_keys(api, ops, store)
    _, used, enrolment = await technician_of(api, store, as_store)
    assert (await enrolling(api, used, enrolment)).status_code == 200
    never_id, never, _ = await technician_of(api, store, as_store)
    moved_id, lost, code = await technician_of(api, store, as_store)
    assert (await enrolling(api, lost, code)).status_code == 200
    replacement = phone()
    register = {"technician_id": moved_id, "phone": replacement, "store_id": store}
    new_phone = await api.post("/v1/technician-accounts", json=register, headers=as_store)
    assert new_phone.status_code == 201, new_phone.text
    enrolled_id, enrolled, code = await technician_of(api, store, as_store)
    assert (await enrolling(api, enrolled, code)).status_code == 200
    await db["refresh_tokens"].delete_many({"subject": enrolled_id})  # its tokens long gone
    # Three as an older gateway stored them: no enrolment fields at all.
    legacy = {"$unset": {"enrolment": "", "enrol_by": "", "enrolment_wrong": ""}}
    await db["accounts"].update_many({"_id": {"$in": [used, never, replacement]}}, legacy)
    await db[MIGRATIONS].delete_one({"_id": LEGACY_ENROLMENT})  # as before it ever ran

    assert await unproven_technician_phones(db, datetime.now(UTC)) == 2
    assert await unproven_technician_phones(db, datetime.now(UTC)) == 0  # once only
    stored = {p: await Accounts(db).get(p) for p in (used, never, replacement, enrolled)}
    assert {p: a.enrolment if a else "gone" for p, a in stored.items()} == {
        used: None,
        never: NONE_ISSUED,
        replacement: NONE_ISSUED,
        enrolled: None,
    }

    refused = await enrolling(api, never, None)
    assert refused_with(refused, "before enrolment codes, with no sign-in"), refused.text
    assert refused_with(await enrolling(api, replacement, None), "before enrolment codes")
    assert (await enrolling(api, used, None)).status_code == 200
    assert (await enrolling(api, enrolled, None)).status_code == 200
    register = {"technician_id": never_id, "phone": never, "store_id": store}
    again = await api.post("/v1/technician-accounts", json=register, headers=as_store)
    assert again.status_code == 201, again.text
    code = again.json()["enrolment_code"]
    assert code is not None
    first = await enrolling(api, never, code)
    assert first.status_code == 200, first.text
    assert first.json()["subject"] == never_id


async def test_an_enrolment_code_is_drawn_again_runs_out_and_is_void_after_five_wrong(
    api: httpx.AsyncClient, gateway: ServiceProcess, mongo: AsyncMongoClient[Document]
) -> None:
    store = f"store_{uuid.uuid4().hex[:6]}"
    _, _, ops = await signed_in_staff(api, mongo, gateway)
    (as_store,) = await store_keys(api, ops, store)
    tech_id, number, lost = await technician_of(api, store, as_store)
    register = {"technician_id": tech_id, "phone": number, "store_id": store}

    async def registered_again() -> str:
        made = await api.post("/v1/technician-accounts", json=register, headers=as_store)
        assert made.status_code == 201, made.text
        code: str = made.json()["enrolment_code"]
        return code

    # The code was lost and the store registers the phone again: a new code, the old void.
    drawn = await registered_again()
    assert drawn != lost
    assert refused_with(await enrolling(api, number, lost), "wrong enrolment code")
    # A week on, it has run out; registering again gives one that works.
    await later(api, 7 * DAY)
    assert refused_with(await enrolling(api, number, drawn), "has run out")
    fresh = await registered_again()
    # Five wrong codes void it, the right one included.
    for left in (4, 3, 2, 1):
        r = await enrolling(api, number, another_code(fresh))
        assert refused_with(r, f"{left} tries left"), r.text
    assert refused_with(await enrolling(api, number, another_code(fresh)), "too often")
    assert refused_with(await enrolling(api, number, fresh), "has run out")
    last = await registered_again()
    signed = await enrolling(api, number, last)
    assert signed.status_code == 200, signed.text
    assert signed.json()["subject"] == tech_id


async def test_an_enrolment_read_before_the_phone_was_registered_again_changes_nothing(
    api: httpx.AsyncClient, gateway: ServiceProcess, mongo: AsyncMongoClient[Document]
) -> None:
    """A phone registered again is a new account (version 0 again): a sign-in that read the
    registration before, and writes after, must not put it back (the store the technician
    left, and its code), as a save checking the version alone did."""
    db = staff_db(mongo, gateway)
    store, other = (f"store_{uuid.uuid4().hex[:6]}" for _ in range(2))
    _, _, ops = await signed_in_staff(api, mongo, gateway)
    as_store, as_other = await store_keys(api, ops, store, other)
    tech_id, number, _ = await technician_of(api, store, as_store)
    stale = await Accounts(db).get(number)
    assert stale is not None
    await refiled_at(api, ops, tech_id, other)
    register = {"technician_id": tech_id, "phone": number, "store_id": other}
    taken_on = await api.post("/v1/technician-accounts", json=register, headers=as_other)
    assert taken_on.status_code == 201, taken_on.text
    fresh = taken_on.json()["enrolment_code"]
    assert fresh is not None  # never signed in on: not proven theirs

    late = CodeIn(phone=number, code="000000", enrolment_code="AAAA-AAAA")
    with pytest.raises(Conflict):
        await signin._enrol(db, stale, late, key=b"any", now=stale.created_at)
    kept = await Accounts(db).get(number)
    assert kept is not None
    assert (kept.store_id, kept.enrolment_wrong) == (other, 0)
    signed = await enrolling(api, number, fresh)
    assert signed.status_code == 200, signed.text


async def test_codes_asked_from_one_ipv6_site_are_capped_there_and_nowhere_else(
    api: httpx.AsyncClient,
) -> None:
    """One site holds a /48: a fresh /64 for each ask stays under each address's limit, so
    the site had the platform's whole allowance to use up. Now it has its own (three
    here); another site asks as before, and a code refused is neither sent nor kept."""
    numbers = [phone() for _ in range(4)]
    for i, number in enumerate(numbers[:3], start=1):
        asked = {"X-Forwarded-For": f"2001:db8:4a:{i:x}::1"}
        sent = await api.post("/v1/auth/otp", json={"phone": number}, headers=asked)
        assert sent.status_code == 202, sent.text
    fresh_64 = {"X-Forwarded-For": "2001:db8:4a:99::7"}
    refused = await api.post("/v1/auth/otp", json={"phone": numbers[3]}, headers=fresh_64)
    assert refused.status_code == 429, refused.text
    assert "too many codes asked from this network" in refused.json()["error"]["message"]
    assert int(refused.headers["Retry-After"]) > 0
    assert (await api.get("/v1/dev/sms", params={"phone": numbers[3]})).json() == []
    elsewhere = {"X-Forwarded-For": "2001:db8:4b::1"}
    sent = await api.post("/v1/auth/otp", json={"phone": numbers[3]}, headers=elsewhere)
    assert sent.status_code == 202, sent.text


async def test_rotations_of_one_key_at_once_leave_one_live_key(
    api: httpx.AsyncClient, gateway: ServiceProcess, mongo: AsyncMongoClient[Document]
) -> None:
    """Each rotation made its new key before revoking the old one: the losers of a race got
    409, and their new keys, shown to nobody, stayed live."""
    store = f"store_{uuid.uuid4().hex[:6]}"
    _, _, ops = await signed_in_staff(api, mongo, gateway)
    as_ops = bearer(ops["access_token"])
    made = await api.post(f"/v1/stores/{store}/api-keys", json={"scopes": ["read"]}, headers=as_ops)
    assert made.status_code == 201, made.text
    key_id = made.json()["key_id"]
    rotations = await asyncio.gather(
        *(api.post(f"/v1/api-keys/{key_id}/rotate", headers=as_ops) for _ in range(6))
    )
    assert sorted(r.status_code for r in rotations) == [201, 409, 409, 409, 409, 409], [
        r.text for r in rotations
    ]
    live = await staff_db(mongo, gateway)["api_keys"].find({"store_id": store}).to_list()
    assert [k["_id"] for k in live if k["revoked_at"] is None] == [
        next(r.json()["key_id"] for r in rotations if r.status_code == 201)
    ]


async def test_twin_requests_for_a_phones_first_code_are_answered_not_crashed(
    api: httpx.AsyncClient,
) -> None:
    """Two first requests for one phone at once both found no code, and the second insert
    hit the first's: a 500. One is sent; the other is told to use it."""
    for _ in range(5):
        number = phone()
        asked = await asyncio.gather(
            *(api.post("/v1/auth/otp", json={"phone": number}) for _ in range(3))
        )
        statuses = [r.status_code for r in asked]
        assert set(statuses) <= {202, 429}, [r.text for r in asked]
        assert 202 in statuses
        assert (await sign_in(api, number))["role"] == "customer"


async def test_a_live_stream_ends_when_the_token_that_opened_it_runs_out(
    api: httpx.AsyncClient,
) -> None:
    tokens = await sign_in(api, phone())
    lines: list[str] = []
    async with api.stream(
        "GET", "/v1/notifications/stream", headers=bearer(tokens["access_token"])
    ) as stream:
        assert stream.status_code == 200, await stream.aread()
        async with asyncio.timeout(15):  # the token lasts 3 s; a keep-alive comes every 15
            async for line in stream.aiter_lines():
                lines.append(line)
    assert lines[0] == ": connected"
    assert "event: credential_expired" in lines
    # The app refreshes and opens it again.
    fresh = await refreshed(api, tokens)
    assert fresh.status_code == 200, fresh.text
    async with api.stream(
        "GET", "/v1/notifications/stream", headers=bearer(fresh.json()["access_token"])
    ) as stream:
        assert stream.status_code == 200
