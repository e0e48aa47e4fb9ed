"""How the simulator's people reach the platform: the public gateway, signed in as they would
be (customers and technicians by phone and one-time code, operations by password, stores by
API key), with the token refreshed when it expires and 429s waited out."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

RETRY_FOR_S = 90.0  # long enough for a service, Kafka or MongoDB to restart


class Refused(Exception):
    """The platform said no (4xx/5xx) where the simulated person expected yes."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(
            f"{response.request.method} {response.request.url.path}: "
            f"{response.status_code} {response.text[:200]}"
        )
        self.status = response.status_code


class Caller:
    """One person's or store's session with the gateway."""

    def __init__(self, http: httpx.AsyncClient, *, api_key: str | None = None) -> None:
        self.http = http
        self.api_key = api_key
        self.access: str | None = None
        self.refresh_token: str | None = None
        self.subject = ""

    def headers(self) -> dict[str, str]:
        if self.api_key:
            return {"X-Api-Key": self.api_key}
        return {"Authorization": f"Bearer {self.access}"} if self.access else {}

    async def call(
        self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201, 202, 204), **kw: Any
    ) -> httpx.Response:
        """The answer, if its status is one of `ok`; Refused otherwise.

        Like a phone app on a bad day, it tries again when the platform cannot be reached or
        answers 502/503/504, for up to `RETRY_FOR_S`. A retried write whose first try did
        land answers 409 (already done): that counts as done.
        """
        headers = {**self.headers(), **kw.pop("headers", {})}
        deadline = time.monotonic() + RETRY_FOR_S
        refreshed, retried, pause = False, False, 0.25
        while True:
            try:
                r = await self.http.request(method, path, headers=headers, **kw)
            except httpx.TransportError:
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
                await self.refresh()
                headers = {**headers, **self.headers()}
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

    async def refresh(self) -> None:
        try:
            r = await self.http.post("/v1/auth/refresh", json={"refresh_token": self.refresh_token})
        except httpx.TransportError:
            return  # the next call tries again
        if r.status_code == 200:
            self._take(r.json())

    async def sign_in_by_phone(self, phone: str) -> None:
        """As the apps do: a code by SMS (the development log stands in for the SMS)."""
        await self.call("POST", "/v1/auth/otp", json={"phone": phone})
        sms = await self.json("GET", "/v1/dev/sms", params={"phone": phone})
        code = sms[0]["text"].rsplit(" ", 1)[-1]
        self._take(await self.json("POST", "/v1/auth/token", json={"phone": phone, "code": code}))

    async def sign_in_as_staff(self, email: str, password: str) -> None:
        self._take(
            await self.json("POST", "/v1/auth/ops", json={"email": email, "password": password})
        )
