"""Gateway rules as a specification."""

from __future__ import annotations

import pytest

from services.gateway.domain import may_retry
from services.gateway.limits import RateLimiter
from shared.errors import TooManyRequests


@pytest.mark.parametrize(
    ("method", "key", "expected"),
    [
        ("GET", None, True),
        ("put", None, True),
        ("DELETE", None, True),
        ("POST", None, False),
        ("POST", "k-12345678", True),
        ("PATCH", None, False),
    ],
)
def test_only_idempotent_calls_are_retried(method: str, key: str | None, expected: bool) -> None:
    assert may_retry(method, key) is expected


def test_a_caller_gets_its_burst_then_waits_for_the_refill_and_others_are_unaffected() -> None:
    limiter = RateLimiter(rate_per_s=2, burst=3)
    for _ in range(3):
        limiter.check("customer:a", now=100.0)
    with pytest.raises(TooManyRequests) as refused:
        limiter.check("customer:a", now=100.0)
    assert refused.value.retry_after == 1
    limiter.check("customer:b", now=100.0)  # another caller has its own bucket
    limiter.check("customer:a", now=100.5)  # half a second: one token back
    with pytest.raises(TooManyRequests):
        limiter.check("customer:a", now=100.5)
