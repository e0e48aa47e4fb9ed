"""Gateway rules as a specification."""

from __future__ import annotations

import pytest

from services.gateway.domain import may_retry


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
