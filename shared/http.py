"""HTTP pieces every service shares: one error shape, correlation ids, request metrics."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared import logs
from shared.errors import DomainError, TooManyRequests
from shared.metrics import HTTP_REQUESTS

CORRELATION_HEADER = "X-Correlation-ID"


class ApiError(BaseModel):
    """The one error shape of the whole API."""

    model_config = ConfigDict(extra="forbid")

    code: str
    message: str
    field: str | None = None
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ApiError


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    details: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ApiError(code=code, message=message, field=field, details=details))
    return JSONResponse(status_code=status, content=body.model_dump(exclude_none=True))


def _field_of(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        details = [
            {
                "field": _field_of(e.get("loc", ())),
                "message": e.get("msg", ""),
                "type": e.get("type"),
            }
            for e in errors
        ]
        first = details[0] if details else {"field": "body", "message": "invalid request"}
        return error_response(
            422,
            "invalid_request",
            f"{first['field']}: {first['message']}",
            field=str(first["field"]),
            details=details,
        )

    @app.exception_handler(DomainError)
    async def domain_error(_: Request, exc: DomainError) -> JSONResponse:
        response = error_response(exc.status, exc.code, exc.message, field=exc.field)
        if isinstance(exc, TooManyRequests):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The server logs the traceback; the client gets the one error shape and the
        # correlation id to quote, never the internals.
        cid = getattr(request.state, "correlation_id", None) or "unknown"
        return error_response(
            500, "internal_error", f"something went wrong on our side; quote correlation id {cid}"
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))


def install_middleware(app: FastAPI, service: str) -> None:
    @app.middleware("http")
    async def correlate_and_measure(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        cid = request.headers.get(CORRELATION_HEADER) or str(uuid.uuid4())
        request.state.correlation_id = cid
        token = logs.correlation_id.set(cid)
        started = time.perf_counter()
        try:
            response = await call_next(request)
        finally:
            logs.correlation_id.reset(token)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        HTTP_REQUESTS.labels(service, request.method, path, str(response.status_code)).observe(
            time.perf_counter() - started
        )
        response.headers[CORRELATION_HEADER] = cid
        return response
