"""Rate limits per principal, and a ceiling on request bodies, at the edge.

Also two that are not per caller: the codes texted over all phones (a flood of sign-ins
from many addresses must not run up the SMS bill), and wrong passwords per staff account
(guessed from many addresses, each under its own limit).

A token bucket per caller (the verified principal; the client address for
sign-in calls, which have none yet): `burst` requests at once, refilled at
`rate` per second. Over the limit: 429 with `Retry-After`. Buckets live in the
gateway process; with several gateway replicas each allows its share.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from shared.errors import TooManyRequests

MAX_BUCKETS = 100_000  # forget idle callers beyond this many


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
                f"{what} (at most {self.rate:g} a second)", retry_after=self._wait(bucket)
            )
        bucket.tokens -= 1

    def ensure_room(self, principal: str, what: str, now: float | None = None) -> None:
        """Raise TooManyRequests if `principal` has no token left, taking none: for limits
        that count failures only (`spend` them as they happen)."""
        bucket = self._bucket(principal, now)
        if bucket.tokens < 1:
            raise TooManyRequests(what, retry_after=self._wait(bucket))

    def spend(self, principal: str, now: float | None = None) -> None:
        """Take a token if there is one (a failure counted; never refused itself)."""
        bucket = self._bucket(principal, now)
        bucket.tokens = max(0.0, bucket.tokens - 1)

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
