"""Calls from the gateway to the owning services: timeouts, safe retries, clear 503s."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.gateway.domain import may_retry
from shared import logs
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
    def from_response(cls, response: httpx.Response) -> UpstreamError:
        try:
            error = response.json()["error"]
            return cls(response.status_code, error["code"], error["message"], error.get("field"))
        except (ValueError, KeyError, TypeError):
            return cls(502, "bad_upstream_response", f"unexpected answer {response.status_code}")


class Upstream:
    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        bases = {
            "booking": settings.booking_url,
            "dispatch": settings.dispatch_url,
            "payments": settings.payments_url,
            "reviews": settings.reviews_url,
        }
        # A pool per service: httpx looks through its pool's connections on every request,
        # so four small pools cost less than one big one, and one slow service cannot take
        # the connections the others need.
        self._clients = {
            name: httpx.AsyncClient(
                base_url=base,
                timeout=settings.timeout_s,
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            )
            for name, base in bases.items()
        }

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()

    async def call(
        self,
        service: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        headers = dict(headers or {})
        cid = logs.correlation_id.get()
        if cid:
            headers[CORRELATION_HEADER] = cid
        attempts = 1 + (
            self.settings.retries if may_retry(method, headers.get("Idempotency-Key")) else 0
        )
        for attempt in range(1, attempts + 1):
            try:
                response = await self._clients[service].request(
                    method,
                    path,
                    json=json,
                    content=content,
                    params=params,
                    headers=headers,
                )
            except (httpx.ReadTimeout, httpx.WriteTimeout) as exc:
                # A service that takes this long is stuck or swamped: tell the client now,
                # rather than wait for it again (and add to its load).
                raise UpstreamTimeout(
                    f"the {service} service did not answer within {self.settings.timeout_s:g} s; "
                    "try again shortly"
                ) from exc
            except httpx.PoolTimeout as exc:
                raise ServiceUnavailable(
                    f"too many calls to the {service} service are waiting; try again shortly"
                ) from exc
            except httpx.TransportError as exc:  # refused, reset: it may be restarting
                if attempt == attempts:
                    raise ServiceUnavailable(
                        f"the {service} service is not answering ({type(exc).__name__}); "
                        "try again shortly"
                    ) from exc
                await asyncio.sleep(0.1 * attempt)
                continue
            if response.status_code in (502, 503, 504) and attempt < attempts:
                await asyncio.sleep(0.1 * attempt)
                continue
            return response
        raise AssertionError("unreachable")
