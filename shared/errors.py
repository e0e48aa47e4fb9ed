"""Errors the domain raises; the HTTP layer maps each to one status and one error shape."""

from __future__ import annotations


class DomainError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Conflict(DomainError):
    """The request is valid but the object's current state forbids it (illegal transition)."""

    status = 409
    code = "conflict"


class VersionMismatch(Conflict):
    """The object changed since the caller read it (optimistic concurrency): reload, retry."""

    code = "version_mismatch"


class Unprocessable(DomainError):
    """Well-formed input that breaks a business rule (unknown item, window in the past...)."""

    status = 422
    code = "unprocessable"


class Forbidden(DomainError):
    """The caller is known but may not touch this object (object-level authorisation)."""

    status = 403
    code = "forbidden"


class Unauthenticated(DomainError):
    """Nobody we know is calling: no (valid) identity on the request."""

    status = 401
    code = "unauthenticated"


class Locked(DomainError):
    """The object is locked for safety; only operations can release it."""

    status = 423
    code = "locked"


class TooManyRequests(DomainError):
    """A rate limit: try again after `retry_after` seconds (sent as `Retry-After`)."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after = max(1, retry_after)


class NotYet(Exception):
    """An event depends on another one, from another topic, that has not arrived yet.

    Topics are not ordered with each other: after a restart one stream can run minutes
    behind another. The consumer keeps retrying such an event (backing off) for up to
    `CONSUMER_WAIT_FOR_S` before dead-lettering it, instead of its few quick attempts.
    """
