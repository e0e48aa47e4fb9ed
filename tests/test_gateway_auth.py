"""Sign-in at the gateway on the real platform: one-time codes, tokens and their attacks,
refresh rotation and reuse, operations staff, stores' API keys, and identity headers a
client makes up."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import pytest
from pymongo import AsyncMongoClient

from deploy.local.demo_data import technician_file
from services.gateway.signin import add_staff
from shared.auth import Actor, Role
from shared.mongo import Document
from tests.conftest import Platform, running_platform
from tests.harness import Infra, eventually
from tests.seed import bearer, gateway_token

pytestmark = pytest.mark.integration


def phone() -> str:
    return f"+3519{random.randint(10_000_000, 99_999_999)}"


async def code_for(api: httpx.AsyncClient, number: str) -> str:
    sms = await api.get("/v1/dev/sms", params={"phone": number})
    assert sms.status_code == 200, sms.text
    text: str = sms.json()[0]["text"]
    return text.rsplit(" ", 1)[-1]


async def sign_in(
    api: httpx.AsyncClient, number: str, enrolment_code: str | None = None
) -> dict[str, Any]:
    """A phone's sign-in (a technician's first on a phone gives their store's code too)."""
    sent = await api.post("/v1/auth/otp", json={"phone": number})
    assert sent.status_code == 202, sent.text
    asked = {"phone": number, "code": await code_for(api, number)}
    if enrolment_code is not None:
        asked["enrolment_code"] = enrolment_code
    tokens = await api.post("/v1/auth/token", json=asked)
    assert tokens.status_code == 200, tokens.text
    body: dict[str, Any] = tokens.json()
    return body


async def test_asking_a_code_as_a_technician_for_a_customers_phone_changes_nothing(
    platform: Platform,
) -> None:
    """Nothing is sent to a phone no store registered, so nothing is stored either: the
    customer's own code still works, and their hourly allowance is untouched."""
    async with platform.client("gateway") as api:
        number = phone()
        sent = await api.post("/v1/auth/otp", json={"phone": number})
        assert sent.status_code == 202, sent.text
        code = await code_for(api, number)
        for _ in range(8):  # more than the phone's hourly allowance
            asked = await api.post("/v1/auth/otp", json={"phone": number, "role": "technician"})
            assert asked.status_code == 202, asked.text  # says nothing either way
        tokens = await api.post("/v1/auth/token", json={"phone": number, "code": code})
        assert tokens.status_code == 200, tokens.text
        assert tokens.json()["role"] == "customer"
        again = await api.post("/v1/auth/otp", json={"phone": number})
        assert again.status_code == 202, again.text


async def test_a_customer_signs_in_with_a_one_time_code_and_reaches_only_their_own_data(
    platform: Platform,
) -> None:
    async with platform.client("gateway") as api:
        number = phone()
        me = await sign_in(api, number)
        assert me["role"] == "customer"
        assert me["subject"].startswith("cus_")
        # The same phone again is the same customer.
        again = await sign_in(api, number)
        assert again["subject"] == me["subject"]
        auth = bearer(me["access_token"])
        own = await api.put(
            f"/v1/customers/{me['subject']}",
            json={"name": "Rita", "phone": number, "preferred_language": "pt"},
            headers=auth,
        )
        assert own.status_code in (200, 204), own.text
        other = await api.get("/v1/customers/cus_someone_else", headers=auth)
        assert other.status_code == 403
        # Identity headers a client makes up are never believed.
        forged = await api.get(
            "/v1/customers/cus_someone_else",
            headers={**auth, "X-Actor-Role": "ops", "X-Actor-Id": "ops_1"},
        )
        assert forged.status_code == 403
        headers_only = await api.get(
            "/v1/customers/cus_someone_else", headers={"X-Actor-Role": "ops", "X-Actor-Id": "o"}
        )
        assert headers_only.status_code == 401


async def test_wrong_codes_run_out_and_asking_too_often_is_limited_with_retry_after(
    platform: Platform,
) -> None:
    async with platform.client("gateway") as api:
        number = phone()
        assert (await api.post("/v1/auth/otp", json={"phone": number})).status_code == 202
        right = await code_for(api, number)
        wrong = f"{(int(right) + 1) % 1_000_000:06d}"
        for _ in range(5):
            r = await api.post("/v1/auth/token", json={"phone": number, "code": wrong})
            assert r.status_code == 401
        spent = await api.post("/v1/auth/token", json={"phone": number, "code": right})
        assert spent.status_code == 401  # five wrong tries burn the code
        for _ in range(4):
            assert (await api.post("/v1/auth/otp", json={"phone": number})).status_code == 202
        limited = await api.post("/v1/auth/otp", json={"phone": number})
        assert limited.status_code == 429
        assert int(limited.headers["Retry-After"]) > 0
        assert limited.json()["error"]["code"] == "rate_limited"


async def test_a_code_asked_for_again_is_the_same_code_so_the_one_in_hand_still_works(
    platform: Platform,
) -> None:
    """Someone asking for a code to your phone (or you, when the text is slow) texts the
    code already sent again, with its time and tries: the code in hand is not voided. Once
    it is used up, the next ask draws a new one."""
    # From an address of its own: the other tests' sign-ins take from its address's limit.
    own = sent_from("203.0.113.30")
    async with httpx.AsyncClient(base_url=platform.url("gateway"), headers=own) as api:
        number = phone()
        assert (await api.post("/v1/auth/otp", json={"phone": number})).status_code == 202
        in_hand = await code_for(api, number)
        wrong = f"{(int(in_hand) + 1) % 1_000_000:06d}"
        tried = await api.post("/v1/auth/token", json={"phone": number, "code": wrong})
        assert "4 attempts left" in tried.text
        assert (await api.post("/v1/auth/otp", json={"phone": number})).status_code == 202
        texts = (await api.get("/v1/dev/sms", params={"phone": number})).json()
        assert [t["text"] for t in texts] == [f"Your Doorstep code is {in_hand}"] * 2
        tried = await api.post("/v1/auth/token", json={"phone": number, "code": wrong})
        assert "3 attempts left" in tried.text  # asking again gives no more tries
        tokens = await api.post("/v1/auth/token", json={"phone": number, "code": in_hand})
        assert tokens.status_code == 200, tokens.text
        assert (await api.post("/v1/auth/otp", json={"phone": number})).status_code == 202
        assert await code_for(api, number) != in_hand
        again = await api.post("/v1/auth/token", json={"phone": number, "code": in_hand})
        assert again.status_code == 401


async def test_a_stranger_guessing_at_your_code_uses_up_none_of_your_tries(
    platform: Platform,
) -> None:
    """Wrong guesses count per address, and every address but the one whose request drew
    the code shares one allowance: a stranger cannot burn the code you are typing, and
    asking for the code again (which anyone may do for any phone) gives no tries of one's
    own."""
    url = platform.url("gateway")
    number = phone()
    async with httpx.AsyncClient(base_url=url, headers=sent_from("203.0.113.41")) as me:
        assert (await me.post("/v1/auth/otp", json={"phone": number})).status_code == 202
        in_hand = await code_for(me, number)
        wrong = f"{(int(in_hand) + 1) % 1_000_000:06d}"
        async with httpx.AsyncClient(base_url=url, headers=sent_from("198.51.100.7")) as stranger:
            for left in range(4, -1, -1):
                r = await stranger.post("/v1/auth/token", json={"phone": number, "code": wrong})
                assert r.status_code == 401
                assert f"({left} attempts left)" in r.text, r.text
            barred = await stranger.post("/v1/auth/token", json={"phone": number, "code": in_hand})
            assert barred.status_code == 401
            assert "too many wrong codes for this phone from here" in barred.text
        # Another address asks for the code (texted again to the phone, not to them): the
        # strangers' five are spent, and asking gave it none of its own.
        async with httpx.AsyncClient(base_url=url, headers=sent_from("198.51.100.9")) as asker:
            assert (await asker.post("/v1/auth/otp", json={"phone": number})).status_code == 202
            r = await asker.post("/v1/auth/token", json={"phone": number, "code": in_hand})
            assert r.status_code == 401
            assert "too many wrong codes for this phone from here" in r.text
        # The one whose request drew the code has all five of theirs, and the code works.
        mistyped = await me.post("/v1/auth/token", json={"phone": number, "code": wrong})
        assert "(4 attempts left)" in mistyped.text, mistyped.text
        tokens = await me.post("/v1/auth/token", json={"phone": number, "code": in_hand})
        assert tokens.status_code == 200, tokens.text


async def test_strangers_asking_for_your_phone_do_not_use_up_your_own_asks(
    platform: Platform,
) -> None:
    """Codes asked for one phone are counted per address (five an hour) and all together
    (twenty): a stranger who asks five times is stopped, and the phone's owner can still
    ask; only many addresses together reach the phone's limit, and not for the addresses
    its owner signed in from lately."""
    url = platform.url("gateway")
    number = phone()

    async def ask(address: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=url, headers=sent_from(address)) as caller:
            return await caller.post("/v1/auth/otp", json={"phone": number})

    async with httpx.AsyncClient(base_url=url, headers=sent_from("203.0.113.49")) as home:
        assert (await ask("203.0.113.49")).status_code == 202  # the owner signs in at home
        code = await code_for(home, number)
        signed_in = await home.post("/v1/auth/token", json={"phone": number, "code": code})
        assert signed_in.status_code == 200, signed_in.text
    for _ in range(5):
        assert (await ask("198.51.100.20")).status_code == 202
    stopped = await ask("198.51.100.20")
    assert stopped.status_code == 429
    assert "too many codes asked for this phone from here" in stopped.text
    mine = await ask("203.0.113.50")  # the owner, elsewhere
    assert mine.status_code == 202, mine.text
    for address, times in (("198.51.100.21", 5), ("198.51.100.22", 5), ("198.51.100.23", 3)):
        for _ in range(times):
            assert (await ask(address)).status_code == 202
    everyone = await ask("198.51.100.24")  # the twenty-first in the hour
    assert everyone.status_code == 429
    assert "too many codes asked for this phone in all" in everyone.text
    assert int(everyone.headers["Retry-After"]) > 0
    elsewhere = await ask("203.0.113.51")  # the owner, somewhere new: the phone's limit
    assert elsewhere.status_code == 429
    assert (await ask("203.0.113.49")).status_code == 202  # at home: strangers cannot stop it


async def test_where_you_signed_in_lately_strangers_guessing_leave_you_your_own_tries(
    platform: Platform,
) -> None:
    """A stranger asked for your code (their request drew it: the text comes to you) and
    others guessed at it for all the tries strangers share. From where you signed in lately
    you have tries, one allowance for all those places together (one may be a carrier's
    shared exit), and the code in your hand works; from elsewhere you would wait for it to
    run out."""
    url = platform.url("gateway")
    number = phone()
    work = httpx.AsyncClient(base_url=url, headers=sent_from("203.0.113.63"))
    async with httpx.AsyncClient(base_url=url, headers=sent_from("203.0.113.61")) as home, work:
        for place in (home, work):
            assert (await place.post("/v1/auth/otp", json={"phone": number})).status_code == 202
            first = await code_for(place, number)
            signed_in = await place.post("/v1/auth/token", json={"phone": number, "code": first})
            assert signed_in.status_code == 200, signed_in.text
        async with httpx.AsyncClient(base_url=url, headers=sent_from("198.51.100.61")) as asker:
            assert (await asker.post("/v1/auth/otp", json={"phone": number})).status_code == 202
        in_hand = await code_for(home, number)
        assert in_hand != first
        wrong = f"{(int(in_hand) + 1) % 1_000_000:06d}"
        async with httpx.AsyncClient(base_url=url, headers=sent_from("198.51.100.62")) as guesser:
            for _ in range(5):
                r = await guesser.post("/v1/auth/token", json={"phone": number, "code": wrong})
                assert r.status_code == 401
        async with httpx.AsyncClient(base_url=url, headers=sent_from("203.0.113.62")) as away:
            barred = await away.post("/v1/auth/token", json={"phone": number, "code": in_hand})
            assert barred.status_code == 401
            assert "too many wrong codes for this phone from here" in barred.text
        mistyped = await home.post("/v1/auth/token", json={"phone": number, "code": wrong})
        assert "(4 attempts left)" in mistyped.text, mistyped.text
        mistyped = await work.post("/v1/auth/token", json={"phone": number, "code": wrong})
        assert "(3 attempts left)" in mistyped.text, mistyped.text  # one allowance for both
        tokens = await home.post("/v1/auth/token", json={"phone": number, "code": in_hand})
        assert tokens.status_code == 200, tokens.text


def tampered(token: str, **changes: Any) -> str:
    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{body}.{signature}"


async def test_tampered_expired_misaddressed_unsigned_and_foreign_tokens_are_refused(
    platform: Platform, mongo: AsyncMongoClient[Document]
) -> None:
    async with platform.client("gateway") as api:
        number = phone()
        me = await sign_in(api, number)
        own_path = f"/v1/customers/{me['subject']}"
        profile = {"name": "Rita", "phone": number, "preferred_language": "pt"}
        await api.put(own_path, json=profile, headers=bearer(me["access_token"]))
        assert (await api.get(own_path, headers=bearer(me["access_token"]))).status_code == 200
        actor = Actor(role=Role.CUSTOMER, subject=me["subject"])
        keys = (await api.get("/v1/auth/keys")).json()["keys"]
        public_key = next(iter(keys.values()))
        attacks = {
            "tampered subject": tampered(me["access_token"], sub="cus_victim"),
            "tampered role": tampered(me["access_token"], role="ops"),
            "expired": await gateway_token(mongo, platform.prefix, actor, exp=1),
            "wrong audience": await gateway_token(mongo, platform.prefix, actor, aud="other-api"),
            "wrong issuer": await gateway_token(mongo, platform.prefix, actor, iss="evil"),
            "no role": await gateway_token(mongo, platform.prefix, actor, role="admin"),
            "alg none": jwt.encode(
                {"sub": me["subject"], "role": "ops", "aud": "doorstep-api", "iss": "doorstep"},
                key="",
                algorithm="none",
            ),
            "HS256 with the public key": jwt.encode(
                {"sub": me["subject"], "role": "ops", "aud": "doorstep-api", "iss": "doorstep"},
                key="x" * 32 + public_key,
                algorithm="HS256",
                headers={"kid": next(iter(keys))},
            ),
            "unknown key id": jwt.encode(
                {"sub": me["subject"]}, key="k" * 32, algorithm="HS256", headers={"kid": "nope"}
            ),
            "garbage": "not.a.token",
        }
        for name, token in attacks.items():
            r = await api.get(own_path, headers=bearer(token))
            assert r.status_code == 401, (name, r.text)
            assert r.json()["error"]["code"] == "unauthenticated", name


async def test_a_refresh_token_works_once_and_its_reuse_or_logout_ends_the_sign_in(
    platform: Platform,
) -> None:
    async with platform.client("gateway") as api:
        first = await sign_in(api, phone())
        second = await api.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert second.status_code == 200, second.text
        assert second.json()["subject"] == first["subject"]
        # The first token again: stolen. It fails, and so does everything of that sign-in.
        reused = await api.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert reused.status_code == 401
        revoked = await api.post(
            "/v1/auth/refresh", json={"refresh_token": second.json()["refresh_token"]}
        )
        assert revoked.status_code == 401
        other = await sign_in(api, phone())
        out = await api.post("/v1/auth/logout", json={"refresh_token": other["refresh_token"]})
        assert out.status_code == 204
        after = await api.post("/v1/auth/refresh", json={"refresh_token": other["refresh_token"]})
        assert after.status_code == 401


async def file_technician(
    api: httpx.AsyncClient, tech_id: str, store: str, headers: dict[str, str]
) -> None:
    badge = f"K-{random.randrange(10**6):06d}"
    body = technician_file((tech_id, "Kim Store", badge, store, ["nails"], 38.72, -9.14))
    filed = await api.put(f"/v1/technicians/{tech_id}", json=body, headers=headers)
    assert filed.status_code == 200, filed.text


async def test_operations_sign_in_issue_store_keys_that_rotate_and_revoke(
    platform: Platform, mongo: AsyncMongoClient[Document]
) -> None:
    email, password = f"ops-{uuid.uuid4().hex[:6]}@doorstep.test", uuid.uuid4().hex
    await add_staff(mongo[f"{platform.prefix}_gateway"], email, password)
    store = f"store_{uuid.uuid4().hex[:6]}"
    async with platform.client("gateway") as api:
        wrong = await api.post("/v1/auth/ops", json={"email": email, "password": "wrong-pass"})
        assert wrong.status_code == 401
        ops = await api.post("/v1/auth/ops", json={"email": email, "password": password})
        assert ops.status_code == 200, ops.text
        assert ops.json()["role"] == "ops"
        assert "password" not in ops.text
        as_ops = bearer(ops.json()["access_token"])
        created = await api.post(
            f"/v1/stores/{store}/api-keys", json={"scopes": ["read", "write"]}, headers=as_ops
        )
        assert created.status_code == 201, created.text
        key = created.json()
        as_store = {"X-Api-Key": key["api_key"]}
        tech_id = f"tech_k{uuid.uuid4().hex[:6]}"
        register = {"technician_id": tech_id, "phone": phone(), "store_id": store}
        # Only a technician dispatch has on file as the store's can be given a sign-in.
        unfiled = await api.post("/v1/technician-accounts", json=register, headers=as_store)
        assert unfiled.status_code == 422, unfiled.text
        assert unfiled.json()["error"]["field"] == "technician_id"
        await file_technician(api, tech_id, store, as_store)
        ok = await api.post("/v1/technician-accounts", json=register, headers=as_store)
        assert ok.status_code == 201, ok.text
        elsewhere = await api.post(
            "/v1/technician-accounts",
            json={**register, "store_id": "store_other"},
            headers=as_store,
        )
        assert elsewhere.status_code == 403
        # The registered technician can now sign in by phone, as a technician of the store,
        # with the enrolment code the store was shown.
        tech = await sign_in(api, register["phone"], ok.json()["enrolment_code"])
        assert (tech["role"], tech["subject"]) == ("technician", tech_id)
        # A store cannot take a customer's phone over, by filing a technician under the
        # customer's id and registering their phone for it.
        victim_phone = phone()
        victim = await sign_in(api, victim_phone)
        assert victim["role"] == "customer"
        await file_technician(api, victim["subject"], store, as_store)
        hijack = {"technician_id": victim["subject"], "phone": victim_phone, "store_id": store}
        taken_over = await api.post("/v1/technician-accounts", json=hijack, headers=as_store)
        assert taken_over.status_code == 409, taken_over.text
        again = await sign_in(api, victim_phone)
        assert (again["role"], again["subject"]) == ("customer", victim["subject"])
        # Another store cannot give itself a sign-in as this store's technician, neither by
        # naming its own store nor this one.
        rival = f"store_{uuid.uuid4().hex[:6]}"
        as_rival = {
            "X-Api-Key": (
                await api.post(
                    f"/v1/stores/{rival}/api-keys", json={"scopes": ["write"]}, headers=as_ops
                )
            ).json()["api_key"]
        }
        taken = {"technician_id": tech_id, "phone": phone()}
        for claimed in (rival, store):
            stolen = await api.post(
                "/v1/technician-accounts", json={**taken, "store_id": claimed}, headers=as_rival
            )
            assert stolen.status_code == 403, stolen.text
        assert (
            await mongo[f"{platform.prefix}_gateway"]["accounts"].find_one({"_id": taken["phone"]})
            is None
        )

        read_only = (
            await api.post(
                f"/v1/stores/{store}/api-keys", json={"scopes": ["read"]}, headers=as_ops
            )
        ).json()
        denied = await api.post(
            "/v1/technician-accounts", json=register, headers={"X-Api-Key": read_only["api_key"]}
        )
        assert denied.status_code == 403

        rotated = await api.post(f"/v1/api-keys/{key['key_id']}/rotate", headers=as_store)
        assert rotated.status_code == 201, rotated.text
        old = await api.post("/v1/technician-accounts", json=register, headers=as_store)
        assert old.status_code == 401
        fresh = {"X-Api-Key": rotated.json()["api_key"]}
        assert (
            await api.post("/v1/technician-accounts", json=register, headers=fresh)
        ).status_code == 201
        gone = await api.delete(f"/v1/api-keys/{rotated.json()['key_id']}", headers=as_ops)
        assert gone.status_code == 204
        after = await api.post("/v1/technician-accounts", json=register, headers=fresh)
        assert after.status_code == 401
        forged = f"{key['api_key'][:-4]}AAAA"
        assert (
            await api.post("/v1/technician-accounts", json=register, headers={"X-Api-Key": forged})
        ).status_code == 401
    stored = await mongo[f"{platform.prefix}_gateway"]["api_keys"].find_one({"_id": key["key_id"]})
    assert stored is not None
    assert key["api_key"] not in json.dumps(stored, default=str)  # only a digest is kept


async def test_a_caller_over_its_rate_gets_429_with_retry_after_and_big_bodies_413(
    platform: Platform,
) -> None:
    async with platform.client("gateway") as api:
        number = phone()
        me = await sign_in(api, number)
        auth = bearer(me["access_token"])
        path = f"/v1/customers/{me['subject']}"
        answers = await asyncio.gather(*(api.get(path, headers=auth) for _ in range(120)))
        codes = [r.status_code for r in answers]
        assert 429 in codes, codes
        limited = next(r for r in answers if r.status_code == 429)
        assert int(limited.headers["Retry-After"]) >= 1
        other = await sign_in(api, phone())
        fine = await api.get(
            f"/v1/customers/{other['subject']}", headers=bearer(other["access_token"])
        )
        assert fine.status_code in (200, 404)  # another caller is not limited by the first
        big = await api.put(
            path,
            content=b'{"name": "' + b"x" * 70_000 + b'"}',
            headers={**auth, "content-type": "application/json"},
        )
        assert big.status_code == 413
        assert big.json()["error"]["code"] == "too_large"


async def test_a_chunked_body_over_the_ceiling_is_refused_before_anyone_is_asked_who_sent_it(
    platform: Platform,
) -> None:
    """A chunked body carries no Content-Length: it is counted as it comes, and refused once
    past the ceiling, before authentication (nobody signs in here) and without being held."""

    async def chunks(total: int, size: int = 16_384) -> AsyncIterator[bytes]:
        yield b'{"phone": "'
        for _ in range(total // size):
            yield b"1" * size
        yield b'"}'

    async with platform.client("gateway") as api:
        big = await api.post(
            "/v1/auth/otp",
            content=chunks(4_000_000),
            headers={"content-type": "application/json"},
        )
        assert "content-length" not in big.request.headers
        assert big.status_code == 413, big.text
        assert big.json()["error"]["code"] == "too_large"
        # A small chunked body is read as any other: here refused for what it says.
        small = await api.post(
            "/v1/auth/otp",
            content=chunks(0),
            headers={"content-type": "application/json"},
        )
        assert small.status_code == 422, small.text
        assert (await api.get("/v1/catalogue/prices", params={"region": "lisbon"})).status_code in (
            200,
            404,
        )


UNLIMITED = "1000000"


@pytest.fixture(scope="module")
def edge_limits(infra: Infra) -> Iterator[Platform]:
    """A platform whose per-address sign-in limit is lifted (as if every call came from
    another address), that texts at most five codes in all and two asked from any one
    address, and lets a caller hold two live streams at once."""
    with running_platform(
        infra,
        GATEWAY_SIGNIN_RATE_PER_S=UNLIMITED,
        GATEWAY_SIGNIN_BURST=UNLIMITED,
        GATEWAY_SMS_BURST="5",
        GATEWAY_SMS_PER_S="0.01",
        GATEWAY_SMS_PER_ADDRESS="2",
        GATEWAY_STREAMS_PER_PRINCIPAL="2",
    ) as running:
        yield running


def sent_from(address: str) -> dict[str, str]:
    """As if the call came from `address` (the gateway believes X-Forwarded-For from a
    proxy on its own machine, as the tests are)."""
    return {"X-Forwarded-For": address}


async def test_wrong_staff_passwords_are_limited_per_account_yet_keep_no_one_out_where_they_work(
    edge_limits: Platform, mongo: AsyncMongoClient[Document]
) -> None:
    """Guesses at one staff account are counted for the account, not only per address (many
    addresses would each stay under their own limit), and twenty sent at once are counted
    as twenty: ten are tried, ten refused. The right password then waits too, from anywhere
    new; but from where the staff member signed in before they sign in as ever, and another
    account is not held up."""
    db = mongo[f"{edge_limits.prefix}_gateway"]
    email, password = f"ops-{uuid.uuid4().hex[:6]}@doorstep.test", uuid.uuid4().hex
    other, other_password = f"ops-{uuid.uuid4().hex[:6]}@doorstep.test", uuid.uuid4().hex
    await add_staff(db, email, password)
    await add_staff(db, other, other_password)
    office = sent_from("203.0.113.7")
    async with edge_limits.client("gateway") as api:
        signed_in = await api.post(
            "/v1/auth/ops", json={"email": email, "password": password}, headers=office
        )
        assert signed_in.status_code == 200, signed_in.text
        guesses = await asyncio.gather(
            *(
                api.post(
                    "/v1/auth/ops",
                    json={"email": email, "password": "guess-123"},
                    headers=sent_from(f"198.51.100.{i}"),
                )
                for i in range(1, 21)
            )
        )
        assert sorted(g.status_code for g in guesses) == [401] * 10 + [429] * 10
        right = {"email": email.upper(), "password": password}
        held = await api.post("/v1/auth/ops", json=right, headers=sent_from("192.0.2.50"))
        assert held.status_code == 429, held.text
        assert "too many wrong passwords for this account" in held.json()["error"]["message"]
        assert int(held.headers["Retry-After"]) > 0
        at_work = await api.post("/v1/auth/ops", json=right, headers=office)
        assert at_work.status_code == 200, at_work.text
        fine = await api.post(
            "/v1/auth/ops",
            json={"email": other, "password": other_password},
            headers=sent_from("198.51.100.1"),
        )
        assert fine.status_code == 200, fine.text


async def test_guesses_from_one_ipv6_network_count_as_from_one_address(
    edge_limits: Platform, mongo: AsyncMongoClient[Document]
) -> None:
    """One subscriber holds a whole /64: a fresh address for each guess is still the same
    address to the limit. Another network where the staff member signed in is not held,
    but the account's usual addresses share one allowance of their own."""
    db = mongo[f"{edge_limits.prefix}_gateway"]
    email, password = f"ops-{uuid.uuid4().hex[:6]}@doorstep.test", uuid.uuid4().hex
    await add_staff(db, email, password)
    home = sent_from("2001:db8:1:3::1")
    async with edge_limits.client("gateway") as api:
        right = {"email": email, "password": password}
        cafe = sent_from("203.0.113.99")
        for usual in (home, cafe):
            assert (await api.post("/v1/auth/ops", json=right, headers=usual)).status_code == 200
        for i in range(1, 11):
            wrong = await api.post(
                "/v1/auth/ops",
                json={"email": email, "password": "guess-123"},
                headers=sent_from(f"2001:db8:1:2::{i:x}"),
            )
            assert wrong.status_code == 401, wrong.text
        held = await api.post("/v1/auth/ops", json=right, headers=sent_from("2001:db8:1:2::ff"))
        assert held.status_code == 429, held.text
        assert "from this address" in held.json()["error"]["message"]
        from_home = await api.post("/v1/auth/ops", json=right, headers=sent_from("2001:db8:1:3::9"))
        assert from_home.status_code == 200, from_home.text
        # The account's usual addresses share one allowance: one of them may be a shared
        # exit, whose other users must not bring the account a fresh one each.
        for _ in range(10):
            wrong = await api.post(
                "/v1/auth/ops", json={"email": email, "password": "guess-123"}, headers=cafe
            )
            assert wrong.status_code == 401, wrong.text
        held = await api.post("/v1/auth/ops", json=right, headers=home)
        assert held.status_code == 429, held.text
        assert "from its usual addresses" in held.json()["error"]["message"]


async def test_codes_texted_are_capped_per_address_and_in_all_and_one_refused_is_not_stored(
    edge_limits: Platform,
) -> None:
    """One address cannot use up what the platform texts: it is refused after its own two.
    A flood from many addresses, each to another phone, stays under every per-address and
    per-phone limit: the platform caps the codes it texts in all. A code refused is neither
    sent nor kept."""
    async with edge_limits.client("gateway") as api:
        phones = [phone() for _ in range(6)]
        crowd = sent_from("203.0.113.20")
        for number in phones[:2]:
            sent = await api.post("/v1/auth/otp", json={"phone": number}, headers=crowd)
            assert sent.status_code == 202, sent.text
        crowded = await api.post("/v1/auth/otp", json={"phone": phones[2]}, headers=crowd)
        assert crowded.status_code == 429, crowded.text
        assert "too many codes asked from this address" in crowded.json()["error"]["message"]
        for i, number in enumerate(phones[2:5], start=1):
            sent = await api.post(
                "/v1/auth/otp", json={"phone": number}, headers=sent_from(f"198.51.100.{i}")
            )
            assert sent.status_code == 202, sent.text
        refused = await api.post(
            "/v1/auth/otp", json={"phone": phones[5]}, headers=sent_from("198.51.100.9")
        )
        assert refused.status_code == 429, refused.text
        assert "texting too many codes" in refused.json()["error"]["message"]
        assert int(refused.headers["Retry-After"]) > 0
        texted = await api.get("/v1/dev/sms", params={"phone": phones[5]})
        assert texted.json() == []
        nothing = await api.post("/v1/auth/token", json={"phone": phones[5], "code": "123456"})
        assert nothing.status_code == 401
        assert "no valid code" in nothing.text


async def test_a_caller_holds_only_so_many_live_streams_and_a_closed_one_frees_its_place(
    edge_limits: Platform, mongo: AsyncMongoClient[Document]
) -> None:
    """Two live streams at once per caller on this platform, notifications and the board
    counted together: the third is refused with a clear 429; another caller is not held up;
    once a client goes away, its place is free again."""

    async def token(role: Role, subject: str) -> dict[str, str]:
        actor = Actor(role=role, subject=subject, store_id=subject if role is Role.STORE else None)
        return bearer(await gateway_token(mongo, edge_limits.prefix, actor))

    ana, rui = (
        await token(Role.CUSTOMER, f"cus_{uuid.uuid4().hex[:8]}"),
        await token(Role.CUSTOMER, f"cus_{uuid.uuid4().hex[:8]}"),
    )
    store = await token(Role.STORE, f"store_{uuid.uuid4().hex[:8]}")
    notifications, board = "/v1/notifications/stream", "/v1/board/stream"
    async with (
        httpx.AsyncClient(base_url=edge_limits.url("gateway"), timeout=10) as api,
        contextlib.AsyncExitStack() as held,
    ):
        first = await held.enter_async_context(api.stream("GET", notifications, headers=ana))
        async with api.stream("GET", notifications, headers=ana) as second:
            assert (first.status_code, second.status_code) == (200, 200)
            third = await api.get(notifications, headers=ana)
            assert third.status_code == 429, third.text
            assert "too many live streams open for this account" in third.json()["error"]["message"]
            assert int(third.headers["Retry-After"]) > 0
            other = await held.enter_async_context(api.stream("GET", notifications, headers=rui))
            assert other.status_code == 200
            for _ in range(2):
                opened = await held.enter_async_context(api.stream("GET", board, headers=store))
                assert opened.status_code == 200
            assert (await api.get(board, headers=store)).status_code == 429
        # The second stream's client went away: its place comes free.

        async def reopened() -> bool:
            again = await held.enter_async_context(api.stream("GET", notifications, headers=ana))
            if again.status_code == 200:
                return True
            await again.aclose()
            return False

        await eventually(reopened, what="a closed stream's place freed")
