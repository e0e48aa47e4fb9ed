"""Calls from the gateway to the owning services: timeouts, safe retries, clear 503s."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.gateway.domain import may_retry
from shared import logs
from shared.auth import ROLE_HEADER, SIGNATURE_HEADER, Call, actor_key, actor_signature
from shared.errors import DomainError
from shared.http import CORRELATION_HEADER


class UpstreamSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    booking_url: str = Field("http://127.0.0.1:8001", validation_alias="BOOKING_URL")
    dispatch_url: str = Field("http://127.0.0.1:8002", validation_alias="DISPATCH_URL")
    payments_url: str = Field("http://127.0.0.1:8003", validation_alias="PAYMENTS_URL")
    reviews_url: str = Field("http://127.0.0.1:8004", validation_alias="REVIEWS_URL")
    timeout_s: float = Field(3.0, validation_alias="UPSTREAM_TIMEOUT_S")
    retries: int = Field(2, validation_alias="UPSTREAM_RETRIES")
    actor_key: SecretStr | None = Field(None, validation_alias="DOORSTEP_ACTOR_KEY")


class ServiceUnavailable(DomainError):
    status = 503
    code = "service_unavailable"


class UpstreamTimeout(DomainError):
    status = 504
    code = "upstream_timeout"


class UpstreamError(DomainError):
    """An owning service's error, passed on to the client in the one error shape."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.status = status
        self.code = code

    @classmethod
    def from_response(cls, response: Answer) -> UpstreamError:
        try:
            error = response.json()["error"]
            return cls(response.status_code, error["code"], error["message"], error.get("field"))
        except (ValueError, KeyError, TypeError):
            return cls(502, "bad_upstream_response", f"unexpected answer {response.status_code}")


@dataclass(frozen=True, slots=True)
class Answer:
    """An owning service's whole answer, read before the connection goes back to its pool."""

    status_code: int
    content: bytes
    headers: Mapping[str, str]  # looked up without regard to case

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def is_json(self) -> bool:
        return self.headers.get("content-type", "").startswith("application/json")


class Upstream:
    """The gateway's calls to the services, on aiohttp's client.

    The gateway makes more calls than any other process (about 28 per journey in the
    city benchmark); httpx spent about a third of the gateway's CPU on them, aiohttp's client
    a fraction of that.
    """

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self._actor_key = actor_key(settings.actor_key)
        bases = {
            "booking": settings.booking_url,
            "dispatch": settings.dispatch_url,
            "payments": settings.payments_url,
            "reviews": settings.reviews_url,
        }
        # Reading stops after timeout_s without a byte (a stuck service: 504); waiting for a
        # pooled connection, or for a new one, stops after timeout_s too (503).
        timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.timeout_s, sock_read=settings.timeout_s
        )
        # A pool per service, so one slow service cannot take the connections the others need.
        self._sessions = {
            name: aiohttp.ClientSession(
                base_url=base,
                timeout=timeout,
                connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30),
                # The caller's Content-Type is passed on as it came, or not at all.
                skip_auto_headers=("User-Agent", "Content-Type"),
                auto_decompress=False,
            )
            for name, base in bases.items()
        }

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()

    async def call(
        self,
        service: str,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        headers = dict(headers or {})
        cid = logs.correlation_id.get()
        if cid:
            headers[CORRELATION_HEADER] = cid
        # The identity this gateway verified, signed for the service at each attempt (a
        # service takes a signature once).
        call = Call(method, path, (params or {}).items(), content or b"", dict(headers))
        attempts = 1 + (
            self.settings.retries if may_retry(method, headers.get("Idempotency-Key")) else 0
        )
        for attempt in range(1, attempts + 1):
            if ROLE_HEADER in headers:
                headers[SIGNATURE_HEADER] = actor_signature(self._actor_key, call)
            try:
                async with self._sessions[service].request(
                    method, path, data=content, params=params, headers=headers
                ) as response:
                    answer = Answer(response.status, await response.read(), response.headers)
            except aiohttp.ConnectionTimeoutError as exc:
                raise ServiceUnavailable(
                    f"no connection to the {service} service within "
                    f"{self.settings.timeout_s:g} s (too many calls waiting, or it is not "
                    "accepting any); try again shortly"
                ) from exc
            except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
                # A service that takes this long is stuck or swamped: tell the client now,
                # rather than wait for it again (and add to its load).
                raise UpstreamTimeout(
                    f"the {service} service did not answer within {self.settings.timeout_s:g} s; "
                    "try again shortly"
                ) from exc
            except aiohttp.ClientError as exc:  # refused, reset: it may be restarting
                if attempt == attempts:
                    raise ServiceUnavailable(
                        f"the {service} service is not answering ({type(exc).__name__}); "
                        "try again shortly"
                    ) from exc
                await asyncio.sleep(0.1 * attempt)
                continue
            if answer.status_code in (502, 503, 504) and attempt < attempts:
                await asyncio.sleep(0.1 * attempt)
                continue
            return answer
        raise AssertionError("unreachable")
