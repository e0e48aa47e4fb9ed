"""The gateway's signature on a caller's identity: what it binds, and what it refuses."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from shared.auth import (
    ID_HEADER,
    ROLE_HEADER,
    SIGNATURE_HEADER,
    SIGNATURE_MAX_AGE_S,
    STORE_HEADER,
    SignedActor,
    actor_key,
    actor_signature,
    signature_fault,
)

KEY = b"k" * 32
NOW = 1_800_000_000
CALL: dict[str, Any] = {
    "method": "POST",
    "path": "/receipts/rc_1/sign",
    "body": b'{"accepted": true}',
    "identity": {ROLE_HEADER: "customer", ID_HEADER: "cus_ana"},
}


def fault(signature: str | None, now: float = NOW, **changed: Any) -> str | None:
    call = {**CALL, **changed}
    return signature_fault(
        KEY,
        signature,
        method=str(call["method"]),
        path=str(call["path"]),
        body=call["body"],
        identity=call["identity"],
        now=now,
    )


def signed(key: bytes = KEY, at: int = NOW) -> str:
    return actor_signature(key, at=at, **CALL)


def test_the_call_it_was_made_for_is_vouched_for() -> None:
    assert fault(signed()) is None


@pytest.mark.parametrize(
    "changed",
    [
        {"identity": {ROLE_HEADER: "ops", ID_HEADER: "cus_ana"}},
        {"identity": {ROLE_HEADER: "customer", ID_HEADER: "cus_bea"}},
        {"identity": {ROLE_HEADER: "customer", ID_HEADER: "cus_ana", STORE_HEADER: "st_1"}},
        {"method": "PUT"},
        {"path": "/receipts/rc_2/sign"},
        {"body": b'{"accepted": false}'},
    ],
    ids=["role", "subject", "store", "method", "path", "body"],
)
def test_a_signature_carries_its_identity_to_no_other_call(changed: dict[str, Any]) -> None:
    assert fault(signed(), **changed) == "the identity signature does not match this call"


def test_another_key_signs_nothing() -> None:
    assert fault(signed(key=b"x" * 32)) == "the identity signature does not match this call"


def test_a_signature_holds_a_minute_either_side_of_its_time() -> None:
    assert fault(signed(), now=NOW + SIGNATURE_MAX_AGE_S) is None
    assert fault(signed(), now=NOW - SIGNATURE_MAX_AGE_S) is None  # a clock a little behind
    assert fault(signed(), now=NOW + SIGNATURE_MAX_AGE_S + 1) == (
        "the identity signature has expired"
    )
    assert fault(signed(), now=NOW - SIGNATURE_MAX_AGE_S - 1) == (
        "the identity signature has expired"
    )


def test_an_unsigned_identity_is_refused() -> None:
    assert fault(None) == (
        "the caller's identity is not signed: services are called through the gateway"
    )


@pytest.mark.parametrize("text", ["abc", f"{NOW}", f"{NOW}.", "-5.ab", f"{'9' * 13}.ab"])
def test_a_malformed_signature_is_refused(text: str) -> None:
    assert fault(text) == "the identity signature is malformed"


def test_a_process_needs_a_key_of_some_length() -> None:
    for unset in (None, "", "short"):
        with pytest.raises(RuntimeError, match="DOORSTEP_ACTOR_KEY"):
            actor_key(unset)
    assert actor_key("s" * 32) == b"s" * 32


def test_the_httpx_signer_signs_what_it_sends_and_only_calls_that_name_a_caller() -> None:
    auth = SignedActor(KEY)
    request = httpx.Request(
        "POST",
        "http://booking/receipts/rc_1/sign?x=1",
        headers=CALL["identity"],
        content=CALL["body"],
    )
    sent = next(auth.auth_flow(request))
    signature = sent.headers[SIGNATURE_HEADER]
    assert fault(signature, now=int(signature.split(".")[0])) is None
    anonymous = next(auth.auth_flow(httpx.Request("GET", "http://booking/healthz")))
    assert SIGNATURE_HEADER not in anonymous.headers
