"""Schemathesis against the gateway's OpenAPI document, on the running platform.

The document is the published one, docs/api/gateway.openapi.json (a unit test keeps it
identical to what the gateway serves).

Every operation the document describes is called with generated input, once without
credentials and once as signed-in customers, technicians and a partner store. Whatever
the input: never a 5xx, every answer documented (status, content type, body schema),
and without credentials nothing but the public routes answers anything but 401.

Operations staff are left out on purpose: their generated calls (new served areas,
key rotations) would reshape the city the rest of the session's tests run in.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from pymongo import AsyncMongoClient
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.auth import Actor, Role
from shared.mongo import Document
from tests.conftest import Platform
from tests.harness import ROOT, Infra
from tests.seed import bearer, gateway_token

pytestmark = pytest.mark.integration

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Routes that stream forever or only exist for development are not fuzzed.
NOT_FUZZED = r"^/v1/(notifications/stream|board/stream|dev/)"
FUZZ = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,  # the same cases every run: a failure here is reproducible
    suppress_health_check=list(HealthCheck),
)


# Examples and fuzzing; the coverage phase's hundreds of boundary cases per operation would
# alone double the suite's time on a 2-core machine.
CONFIG = SchemathesisConfig.from_dict({"phases": {"coverage": {"enabled": False}}})
api = schemathesis.openapi.from_path(
    ROOT / "docs" / "api" / "gateway.openapi.json", config=CONFIG
).exclude(path_regex=NOT_FUZZED)
# Without credentials a caller gets nothing: refused as unknown (401), or for a request it
# could not have sent right anyway (unparseable or oversized body, invalid input, too many).
REFUSED = {400, 401, 413, 422, 429}


def needs_credentials(case: Any) -> bool:
    return bool(case.operation.definition.raw.get("security"))


HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an HTTP token (RFC 9110)


def not_http(case: Any) -> bool:
    """Headers no HTTP server takes (a name that is not a token, a Content-Length that is
    not a number): uvicorn refuses such a message itself, 400 in plain text, before any
    route is reached, so the API's document has nothing to say about the answer."""
    return any(
        not HEADER_NAME.match(name)
        or (name.lower() == "content-length" and not str(value).isdigit())
        for name, value in (case.headers or {}).items()
    )


def refused_as_not_http(case: Any, response: Any) -> bool:
    """A message that is not HTTP is refused (400), whoever sends it."""
    if not not_http(case):
        return False
    assert response.status_code == 400, (case.headers, response.text[:300])
    return True


@pytest.fixture(scope="module")
def callers(infra: Infra, platform: Platform) -> Iterator[dict[str, str]]:
    """Signed-in callers taken in turn, so that no one of them meets its rate limit."""

    async def mint() -> list[dict[str, str]]:
        mongo: AsyncMongoClient[Document] = AsyncMongoClient(infra.mongodb_uri)
        try:
            actors = [
                Actor(role=Role.OPS, subject="ops_fuzz"),  # only to issue the store's key
                *(Actor(role=Role.CUSTOMER, subject=f"cus_fuzz{i}") for i in range(8)),
                *(
                    Actor(role=Role.TECHNICIAN, subject=f"tech_fuzz{i}", store_id="st_fuzz")
                    for i in range(4)
                ),
            ]
            return [bearer(await gateway_token(mongo, platform.prefix, a)) for a in actors]
        finally:
            await mongo.close()

    ops, *tokens = asyncio.run(mint())
    with httpx.Client(base_url=platform.url("gateway"), timeout=10) as http:
        issued = http.post(
            "/v1/stores/st_fuzz/api-keys", json={"scopes": ["read", "write"]}, headers=ops
        )
    assert issued.status_code == 201, issued.text
    return itertools.cycle([*tokens, {"X-Api-Key": issued.json()["api_key"]}])


@api.parametrize()
@FUZZ
def test_without_credentials_only_public_routes_answer_and_nothing_breaks(
    case: Any, platform: Platform
) -> None:
    response = case.call(base_url=platform.url("gateway"))
    if refused_as_not_http(case, response):
        return
    case.validate_response(response, checks=CHECKS)
    if case.method.upper() != case.operation.method.upper():
        # Schemathesis also tries methods the path does not offer.
        assert response.status_code == 405, response.text
    elif needs_credentials(case):
        assert response.status_code in REFUSED, (
            f"{case.operation.label} answered {response.status_code} to a caller "
            f"without credentials: {response.text[:300]}"
        )


@api.parametrize()
@FUZZ
def test_signed_in_callers_get_documented_answers_and_never_a_5xx(
    case: Any, platform: Platform, callers: Iterator[dict[str, str]]
) -> None:
    headers = next(callers) if needs_credentials(case) else {}
    response = case.call(base_url=platform.url("gateway"), headers=headers)
    if refused_as_not_http(case, response):
        return
    case.validate_response(response, checks=CHECKS)
