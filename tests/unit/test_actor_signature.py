"""The gateway's signature on a caller's identity: what it binds, and what it refuses."""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest

from shared.auth import (
    ID_HEADER,
    ROLE_HEADER,
    SIGNATURE_HEADER,
    SIGNATURE_MAX_AGE_S,
    STORE_HEADER,
    Call,
    SignedActor,
    UsedSignatures,
    actor_key,
    actor_signature,
    signature_fault,
    signature_matches,
)

KEY = b"k" * 32
NOW = 1_800_000_000
CUSTOMER = {ROLE_HEADER: "customer", ID_HEADER: "cus_ana"}
CALL = Call(
    "POST",
    "/coupons",
    [("customer_id", "cus_ana")],
    b'{"amount": 500}',
    {**CUSTOMER, "Idempotency-Key": "grant-1"},
)


def vouches(signature: str, call: Call = CALL, now: float = NOW) -> bool:
    return signature_fault(signature, now) is None and signature_matches(KEY, signature, call)


def test_the_call_it_was_made_for_is_vouched_for() -> None:
    assert vouches(actor_signature(KEY, CALL, NOW))


@pytest.mark.parametrize(
    "changed",
    [
        {"headers": {**CALL.headers, ROLE_HEADER: "ops"}},
        {"headers": {**CALL.headers, ID_HEADER: "cus_bea"}},
        {"headers": {**CALL.headers, STORE_HEADER: "st_1"}},
        {"headers": {**CALL.headers, "Idempotency-Key": "grant-2"}},
        {"headers": {**CALL.headers, "If-Match": '"3"'}},
        {"method": "PUT"},
        {"path": "/holdings"},
        {"query": [("customer_id", "cus_bea")]},
        {"query": [("customer_id", "cus_ana"), ("store_id", "st_1")]},
        {"body": b'{"amount": 50000}'},
    ],
    ids=[
        "role",
        "subject",
        "store",
        "idempotency-key",
        "if-match",
        "method",
        "path",
        "query",
        "more-query",
        "body",
    ],
)
def test_a_signature_carries_its_identity_to_no_other_call(changed: dict[str, object]) -> None:
    signature = actor_signature(KEY, CALL, NOW)
    assert not vouches(signature, replace(CALL, **changed))  # type: ignore[arg-type]


def test_the_querys_order_does_not_matter() -> None:
    two = replace(CALL, query=[("a", "1"), ("b", "2")])
    assert vouches(actor_signature(KEY, two, NOW), replace(two, query=[("b", "2"), ("a", "1")]))


def test_another_key_signs_nothing() -> None:
    assert not vouches(actor_signature(b"x" * 32, CALL, NOW))


def test_a_signature_holds_a_minute_either_side_of_its_time() -> None:
    signature = actor_signature(KEY, CALL, NOW)
    assert vouches(signature, now=NOW + SIGNATURE_MAX_AGE_S)
    assert vouches(signature, now=NOW - SIGNATURE_MAX_AGE_S)  # a clock a little behind
    for now in (NOW + SIGNATURE_MAX_AGE_S + 1, NOW - SIGNATURE_MAX_AGE_S - 1):
        assert signature_fault(signature, now) == "the identity signature has expired"


def test_an_unsigned_identity_is_refused() -> None:
    assert signature_fault(None, NOW) == (
        "the caller's identity is not signed: services are called through the gateway"
    )


@pytest.mark.parametrize(
    "text",
    [
        "abc",
        f"{NOW}",
        f"{NOW}.",
        "-5." + "a" * 64,
        f"{'9' * 13}." + "a" * 64,
        f"{NOW}." + "g" * 64,
        f"{NOW}." + "a" * 63,
        f"{NOW}." + "a" * 64,  # no nonce
        f"{NOW}.{'a' * 15}." + "a" * 64,
        f"{NOW}.{'G' * 16}." + "a" * 64,
        f"{NOW}.{'a' * 16}." + "a" * 65,
        "\u00b2." + "a" * 64,  # a digit to str.isdigit, not to int()
        f"{NOW}." + "\u00e9" * 64,  # not ASCII: compare_digest would raise
    ],
)
def test_a_malformed_signature_is_refused_without_an_error(text: str) -> None:
    assert signature_fault(text, NOW) == "the identity signature is malformed"


def test_each_signature_is_its_own_even_for_the_same_call_at_the_same_second() -> None:
    first, second = actor_signature(KEY, CALL, NOW), actor_signature(KEY, CALL, NOW)
    assert first != second
    assert vouches(first)
    assert vouches(second)


def test_the_nonce_is_signed_too() -> None:
    at, nonce, mac = actor_signature(KEY, CALL, NOW).split(".")
    other_nonce = ("0" if nonce[0] != "0" else "1") + nonce[1:]
    assert not vouches(f"{at}.{other_nonce}.{mac}")


def test_a_signature_is_taken_once_while_it_could_still_pass() -> None:
    used = UsedSignatures(keep_s=120)
    first, other = actor_signature(KEY, CALL, NOW), actor_signature(KEY, CALL, NOW)
    assert used.first_use(first, now=0.0)
    assert not used.first_use(first, now=1.0)
    assert used.first_use(other, now=2.0)
    assert not used.first_use(first, now=119.0)
    assert used.first_use(actor_signature(KEY, CALL, NOW), now=130.0)
    assert len(used) == 1  # the two from the first seconds let go: past their time check


def test_a_process_needs_a_key_of_some_length() -> None:
    for unset in (None, "", "short"):
        with pytest.raises(RuntimeError, match="DOORSTEP_ACTOR_KEY"):
            actor_key(unset)
    assert actor_key("s" * 32) == b"s" * 32


def test_the_httpx_signer_signs_what_it_sends_and_only_calls_that_name_a_caller() -> None:
    auth = SignedActor(KEY)
    request = httpx.Request(
        "POST",
        "http://payments/coupons?customer_id=cus_ana",
        headers={**CUSTOMER, "idempotency-key": "grant-1"},  # any case: headers are headers
        content=CALL.body,
    )
    sent = next(auth.auth_flow(request))
    signature = sent.headers[SIGNATURE_HEADER]
    assert vouches(signature, now=int(signature.split(".")[0]))
    anonymous = next(auth.auth_flow(httpx.Request("GET", "http://booking/healthz")))
    assert SIGNATURE_HEADER not in anonymous.headers
