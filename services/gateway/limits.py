"""Rate limits per principal, and a ceiling on request bodies, at the edge.

Also the live streams a principal holds open at once, and limits of sign-in's own: the codes
texted per address and over all phones (a flood of sign-ins from many addresses must not run
up the SMS bill), and wrong passwords per staff account, from one address and from all
(guessed from many addresses, each under its own limit).

A token bucket per caller (the verified principal; the client address for
sign-in calls, which have none yet): `burst` requests at once, refilled at
`rate` per second. Over the limit: 429 with `Retry-After`. Buckets live in the
gateway process; with several gateway replicas each allows its share.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from shared.errors import TooManyRequests

MAX_BUCKETS = 100_000  # forget idle callers beyond this many


def caller_address(host: str | None) -> str:
    """The client address a limit counts: an IPv6 address by its /64, since one subscriber
    holds a whole /64 and could otherwise take a fresh address for every try."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def caller_network(host: str | None) -> str | None:
    """The IPv6 site an address belongs to, its /48 (what one customer of a provider, or one
    office, is routed): a looser limit there stops one site taking a fresh /64 for every
    try. None for IPv4, where an address is scarce enough to count alone."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return None
    if not isinstance(address, ipaddress.IPv6Address) or address.ipv4_mapped is not None:
        return None
    return str(ipaddress.IPv6Network((address, 48), strict=False))


def per(rate_per_s: float) -> str:
    """A rate as people say it: '5 a second', '1 a minute', '20 an hour'."""
    for unit, seconds in (("a second", 1), ("a minute", 60), ("an hour", 3600)):
        if rate_per_s * seconds >= 1 or unit == "an hour":
            return f"{rate_per_s * seconds:.3g} {unit}"
    raise AssertionError("unreachable")


@dataclass
class Bucket:
    tokens: float
    at: float


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self._buckets: dict[str, Bucket] = {}

    def check(
        self, principal: str, now: float | None = None, *, what: str = "too many requests"
    ) -> None:
        """Take one token for `principal`, or raise TooManyRequests (`what` says of what)."""
        bucket = self._bucket(principal, now)
        if bucket.tokens < 1:
            raise TooManyRequests(
                f"{what} (at most {per(self.rate)})", retry_after=self._wait(bucket)
            )
        bucket.tokens -= 1

    def give_back(self, principal: str, now: float | None = None) -> None:
        """Return a token `check` took: for limits that count failures only. Taking it
        before the attempt and giving it back after a success bounds attempts in flight
        at once too, which counting failures afterwards would not."""
        bucket = self._bucket(principal, now)
        bucket.tokens = min(float(self.burst), bucket.tokens + 1)

    def _wait(self, bucket: Bucket) -> int:
        return math.ceil((1 - bucket.tokens) / self.rate)

    def _bucket(self, principal: str, now: float | None) -> Bucket:
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(principal)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._forget_full(now)
            bucket = self._buckets[principal] = Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        return bucket

    def _forget_full(self, now: float) -> None:
        """Drop callers whose buckets have refilled: they would start full anyway."""
        full = [
            p for p, b in self._buckets.items() if b.tokens + (now - b.at) * self.rate >= self.burst
        ]
        for principal in full:
            del self._buckets[principal]


class StreamSlots:
    """Live streams open at once per principal. Each holds a connection and a subscription
    for as long as it lasts, which a rate limit on opening them does not bound: a client
    that opens streams in a loop and never closes them would hold the gateway's memory."""

    RETRY_AFTER_S = 5

    def __init__(self, per_principal: int) -> None:
        self.per_principal = per_principal
        self._open: dict[str, int] = {}

    def open_for(self, principal: str) -> int:
        return self._open.get(principal, 0)

    def take(self, principal: str) -> Slot:
        """A slot for one more stream, or TooManyRequests if `principal` holds them all."""
        if self.open_for(principal) >= self.per_principal:
            raise TooManyRequests(
                f"too many live streams open for this account (at most {self.per_principal});"
                " close one first",
                retry_after=self.RETRY_AFTER_S,
            )
        self._open[principal] = self.open_for(principal) + 1
        return Slot(self, principal)

    def _release(self, principal: str) -> None:
        left = self.open_for(principal) - 1
        if left > 0:
            self._open[principal] = left
        else:
            self._open.pop(principal, None)


class Slot:
    def __init__(self, slots: StreamSlots, principal: str) -> None:
        self._slots, self._principal, self._held = slots, principal, True

    def release(self) -> None:
        """Give the slot back (once, however often it is called)."""
        if self._held:
            self._held = False
            self._slots._release(self._principal)


class HeldStream(StreamingResponse):
    """A live stream holding a slot, given back when the response ends however it ends:
    read to its end, the client gone (before the first byte too), the server stopping."""

    def __init__(self, slot: Slot, body: AsyncIterator[str]) -> None:
        super().__init__(
            body,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slot.release()
