"""Services believe a caller's identity only with the gateway's signature: on the real
services, an identity sent without it, signed with another key, copied from another call
or sent again with the very call it was made for is refused with 401 and changes nothing; a
process without the key does not start."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from shared.auth import REPLAYED, SIGNATURE_HEADER, SignedActor
from tests.conftest import Platform
from tests.harness import Infra, ServiceProcess, new_prefix
from tests.seed import OPS, as_customer

pytestmark = pytest.mark.integration

UNSIGNED = "the caller's identity is not signed: services are called through the gateway"
MISMATCH = "the identity signature does not match this call"
# Something each service shows operations only: absent, so a believed caller gets 404.
OPS_READS = {
    "booking": "/customers/cus_nobody",
    "dispatch": "/technicians/tech_nobody",
    "payments": "/receipts/rc_nobody",
    "reviews": "/complaints/cp_nobody",
}


def profile() -> dict[str, str]:
    return {"name": "Ana Ribeiro", "phone": "+351912345678", "preferred_language": "pt"}


@pytest.mark.parametrize("service", sorted(OPS_READS))
async def test_every_service_refuses_an_identity_the_gateway_did_not_sign(
    platform: Platform, service: str
) -> None:
    path = OPS_READS[service]
    async with httpx.AsyncClient(base_url=platform.url(service), timeout=10) as raw:
        unsigned = await raw.get(path, headers=OPS)
        assert unsigned.status_code == 401, unsigned.text
        assert unsigned.json()["error"]["message"] == UNSIGNED
        forged = await raw.get(path, headers=OPS, auth=SignedActor(b"not the key " * 3))
        assert forged.status_code == 401, forged.text
        assert forged.json()["error"]["message"] == MISMATCH
    async with platform.client(service, OPS) as signed:
        believed = await signed.get(path)
        assert believed.status_code == 404, believed.text


async def test_a_write_with_an_unsigned_identity_stores_nothing(platform: Platform) -> None:
    customer = f"cus_{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=platform.url("booking"), timeout=10) as raw:
        r = await raw.put(f"/customers/{customer}", json=profile(), headers=as_customer(customer))
        assert r.status_code == 401, r.text
    async with platform.client("booking", as_customer(customer)) as signed:
        assert (await signed.get(f"/customers/{customer}")).status_code == 404
        assert (await signed.put(f"/customers/{customer}", json=profile())).status_code == 200
        assert (await signed.get(f"/customers/{customer}")).json()["name"] == "Ana Ribeiro"


async def test_a_copied_signature_vouches_for_no_other_caller_path_or_body(
    platform: Platform,
) -> None:
    ana, bea = f"cus_{uuid.uuid4().hex[:8]}", f"cus_{uuid.uuid4().hex[:8]}"
    seen: list[httpx.Request] = []
    async with platform.client("booking", as_customer(ana)) as signed:
        signed.event_hooks["request"].append(lambda request: _keep(seen, request))
        assert (await signed.put(f"/customers/{ana}", json=profile())).status_code == 200
    copied = seen[-1].headers[SIGNATURE_HEADER]
    async with httpx.AsyncClient(base_url=platform.url("booking"), timeout=10) as raw:
        # The same signature with another caller, on another path, with another body.
        attempts = [
            ("PUT", f"/customers/{ana}", {**profile(), "name": "Eve"}, as_customer(ana)),
            ("PUT", f"/customers/{bea}", profile(), as_customer(bea)),
            ("PUT", f"/customers/{bea}", profile(), as_customer(ana)),
            ("PUT", f"/customers/{ana}", profile(), OPS),
            ("PUT", f"/customers/{ana}?as=ops", profile(), as_customer(ana)),
        ]
        for method, path, body, caller in attempts:
            r = await raw.request(
                method, path, json=body, headers={**caller, SIGNATURE_HEADER: copied}
            )
            assert r.status_code == 401, (path, caller, r.text)
            assert r.json()["error"]["message"] == MISMATCH
    async with platform.client("booking", OPS) as ops:
        assert (await ops.get(f"/customers/{ana}")).json()["name"] == "Ana Ribeiro"
        assert (await ops.get(f"/customers/{bea}")).status_code == 404


async def test_an_exact_copy_of_a_signed_call_is_refused(platform: Platform) -> None:
    """Overheard between the gateway and a service, a signed call could be sent again as it
    was, within its minute. Each signature is good for one call now."""
    ana = f"cus_{uuid.uuid4().hex[:8]}"
    seen: list[httpx.Request] = []
    async with platform.client("booking", as_customer(ana)) as signed:
        signed.event_hooks["request"].append(lambda request: _keep(seen, request))
        assert (await signed.put(f"/customers/{ana}", json=profile())).status_code == 200
        again = await signed.put(f"/customers/{ana}", json=profile())
        assert again.status_code == 200, "the same call, signed afresh, is another call"
    first = seen[0]
    async with httpx.AsyncClient(base_url=platform.url("booking"), timeout=10) as raw:
        copy = await raw.send(
            httpx.Request(first.method, first.url, headers=first.headers, content=first.content)
        )
    assert copy.status_code == 401, copy.text
    assert copy.json()["error"]["message"] == REPLAYED


async def _keep(seen: list[httpx.Request], request: httpx.Request) -> None:
    seen.append(request)


@pytest.mark.parametrize("key", ["", "too short"])
async def test_a_service_without_the_key_does_not_start(infra: Infra, key: str) -> None:
    booking = ServiceProcess("booking", infra, new_prefix(), extra_env={"DOORSTEP_ACTOR_KEY": key})
    booking.start(wait=False)
    try:
        assert await asyncio.to_thread(booking.wait_exit) != 0
    finally:
        booking.kill()
    assert "DOORSTEP_ACTOR_KEY must be set" in booking.tail_log(80)


async def test_a_service_refuses_a_body_too_large_before_reading_it(platform: Platform) -> None:
    """Services read a body to check the signature over it: only once it is of a sane size."""
    async with httpx.AsyncClient(base_url=platform.url("booking"), timeout=10) as raw:
        big = await raw.post("/bookings", content=b"x" * (65 * 1024), headers=OPS)
        assert big.status_code == 413, big.text
        assert big.json()["error"]["code"] == "too_large"
