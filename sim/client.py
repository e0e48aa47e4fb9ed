"""How the simulator's people reach the platform: the public gateway, signed in as they would
be (customers and technicians by phone and one-time code, operations by password, stores by
API key), with the token refreshed when it expires and 429s waited out.

On aiohttp: at the bench's rates the simulator shares the machine with the platform, and an
httpx call took about seven times the CPU of an aiohttp call (415-484 against 57 µs, measured
alone against one uvicorn app on this machine).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

RETRY_FOR_S = 90.0  # long enough for a service, Kafka or MongoDB to restart
# What a phone app meets when the platform cannot be reached or does not answer in time.
UNREACHABLE = (aiohttp.ClientError, TimeoutError)


def session(base_url: str, timeout: aiohttp.ClientTimeout) -> aiohttp.ClientSession:
    """A pool of connections to the gateway (as many as the people need; no cookies: the
    apps sign in with tokens)."""
    return aiohttp.ClientSession(
        base_url=base_url,
        timeout=timeout,
        connector=aiohttp.TCPConnector(limit=0),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


@dataclass(frozen=True)
class Answer:
    """The gateway's answer to one call, read in full."""

    method: str
    path: str
    status_code: int
    headers: Mapping[str, str]
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")


class Refused(Exception):
    """The platform said no (4xx/5xx) where the simulated person expected yes."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(f"{answer.method} {answer.path}: {answer.status_code} {answer.text[:200]}")
        self.status = answer.status_code


class Caller:
    """One person's or store's session with the gateway."""

    def __init__(
        self, http: aiohttp.ClientSession, *, api_key: str | None = None, address: str | None = None
    ) -> None:
        self.http = http
        self.api_key = api_key
        # Where this person's phone calls from. A city's people are not all on one address:
        # the gateway's limits per address (sign-in, codes texted) count each apart. (The
        # gateway believes X-Forwarded-For from its own machine only, as from a proxy.)
        self.address = address
        self.access: str | None = None
        self.refresh_token: str | None = None
        self.subject = ""
        # Calls under way at once that find the token expired refresh it once, as an app
        # must: a refresh token works once, and its reuse ends the whole sign-in.
        self._refreshing = asyncio.Lock()

    def headers(self) -> dict[str, str]:
        if self.api_key:
            return {"X-Api-Key": self.api_key}
        return {"Authorization": f"Bearer {self.access}"} if self.access else {}

    async def send(self, method: str, path: str, **kw: Any) -> Answer:
        """One call, its answer read in full; aiohttp's errors when it cannot be had."""
        if self.address:
            kw["headers"] = {**kw.get("headers", {}), "X-Forwarded-For": self.address}
        async with self.http.request(method, path, **kw) as r:
            content = await r.read()
        return Answer(method, path, r.status, r.headers, content)

    async def call(
        self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201, 202, 204), **kw: Any
    ) -> Answer:
        """The answer, if its status is one of `ok`; Refused otherwise.

        Like a phone app on a bad day, it tries again when the platform cannot be reached or
        answers 502/503/504, for up to `RETRY_FOR_S`. A retried write whose first try did
        land answers 409 (already done): that counts as done.
        """
        headers = {**self.headers(), **kw.pop("headers", {})}
        sent_with = self.access
        deadline = time.monotonic() + RETRY_FOR_S
        refreshed, retried, pause = False, False, 0.25
        while True:
            try:
                r = await self.send(method, path, headers=headers, **kw)
            except UNREACHABLE:
                if time.monotonic() > deadline:
                    raise
                retried = True
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
                continue
            if r.status_code == 429:  # wait as told, like a well-behaved app
                await asyncio.sleep(min(float(r.headers.get("retry-after", "1")), 5.0))
                continue
            if r.status_code == 401 and self.refresh_token and not refreshed:
                refreshed = True
                await self.refresh(sent_with)
                headers, sent_with = {**headers, **self.headers()}, self.access
                continue
            if r.status_code in (502, 503, 504) and time.monotonic() < deadline:
                retried = True
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
                continue
            break
        if r.status_code == 409 and retried and method != "GET":
            return r
        if r.status_code not in ok:
            raise Refused(r)
        return r

    async def json(self, method: str, path: str, **kw: Any) -> Any:
        return (await self.call(method, path, **kw)).json()

    def _take(self, tokens: dict[str, Any]) -> None:
        self.access, self.refresh_token = tokens["access_token"], tokens["refresh_token"]
        self.subject = tokens["subject"]

    async def refresh(self, expired: str | None) -> None:
        """New tokens for the `expired` access token, unless another call got them already."""
        async with self._refreshing:
            if self.access != expired:
                return
            try:
                r = await self.send(
                    "POST", "/v1/auth/refresh", json={"refresh_token": self.refresh_token}
                )
            except UNREACHABLE:
                return  # the next call tries again
            if r.status_code == 200:
                self._take(r.json())

    async def sign_in_by_phone(self, phone: str, enrolment_code: str | None = None) -> None:
        """As the apps do: a code by SMS (the development log stands in for the SMS); a
        technician's first sign-in on a phone also gives the code their store handed them."""
        await self.call("POST", "/v1/auth/otp", json={"phone": phone})
        sms = await self.json("GET", "/v1/dev/sms", params={"phone": phone})
        body = {"phone": phone, "code": sms[0]["text"].rsplit(" ", 1)[-1]}
        if enrolment_code is not None:
            body["enrolment_code"] = enrolment_code
        self._take(await self.json("POST", "/v1/auth/token", json=body))

    async def sign_in_as_staff(self, email: str, password: str) -> None:
        self._take(
            await self.json("POST", "/v1/auth/ops", json={"email": email, "password": password})
        )
