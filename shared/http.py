"""HTTP pieces every service shares: one error shape, correlation ids, request metrics."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from pymongo.errors import ConnectionFailure, PyMongoError
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import logs
from shared.errors import DomainError, TooManyRequests
from shared.metrics import HTTP_REQUESTS

log = logging.getLogger(__name__)

CORRELATION_HEADER = "X-Correlation-ID"
SLOW_ANSWER_S = 2.0  # answers slower than this are logged: the gateway gives up at 3 s


def database_unreachable(exc: PyMongoError) -> bool:
    """MongoDB is away (restarting, electing, unreachable), not a fault of the request."""
    return isinstance(exc, ConnectionFailure) or any(
        exc.has_error_label(label) for label in ("TransientTransactionError", "RetryableWriteError")
    )


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

    @app.exception_handler(UnicodeEncodeError)
    async def not_text(_: Request, exc: UnicodeEncodeError) -> JSONResponse:
        # Text no model bounded (a lone surrogate: JSON carries it, a plain `str` keeps it)
        # that reached an encoder: BSON needs real text. Raised before anything is written.
        log.warning("refused text that is not Unicode: %s", exc.reason)
        return error_response(
            422, "invalid_request", "text must be valid Unicode (no lone surrogates)"
        )

    @app.exception_handler(PyMongoError)
    async def database_error(request: Request, exc: PyMongoError) -> JSONResponse:
        if database_unreachable(exc):
            # Nothing was stored (the transaction did not commit): the caller may retry.
            log.warning("database unavailable: %s", exc)
            response = error_response(
                503, "service_unavailable", "the database is unavailable; try again shortly"
            )
            response.headers["Retry-After"] = "1"
            return response
        log.error("database error", exc_info=exc)
        return await unexpected(request, exc)

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
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        return error_response(exc.status_code, code, str(exc.detail))


# What any operation may answer besides its success, all in the one error shape.
ERROR_STATUSES = {
    "400": "Bad request",
    "401": "Not signed in, or the credential is not valid",
    "403": "Signed in, but this object or action is not the caller's",
    "404": "No such object (or not one the caller may see)",
    "409": "The object's state or version forbids this now",
    "413": "The request body is too large",
    "422": "The input breaks the schema or a business rule; `field` names it",
    "423": "Locked for safety until operations release it",
    "429": "Too many requests; retry after `Retry-After` seconds",
    "502": "An upstream service answered something unusable",
    "503": "A service the call needs is down; retry later",
    "504": "A service the call needs did not answer in time",
}


def document_errors(app: FastAPI) -> None:
    """The OpenAPI document shows the error shape clients really get (FastAPI's default
    422 schema is not it) on every operation."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = generate()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        schemas["ApiError"] = ApiError.model_json_schema()
        schemas["ErrorResponse"] = {
            "type": "object",
            "title": "ErrorResponse",
            "properties": {"error": {"$ref": "#/components/schemas/ApiError"}},
            "required": ["error"],
            "additionalProperties": False,
        }
        shape = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                for status, description in ERROR_STATUSES.items():
                    # A route's own answer for a status stands (FastAPI's 422 is not ours).
                    if status == "422" or status not in responses:
                        responses[status] = {"description": description, "content": shape}
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


class CorrelateAndMeasure:
    """Every request gets a correlation id (the caller's, or a new one) in its logs and its
    answer, and its duration in the request metrics. Plain ASGI, not `@app.middleware`:
    Starlette's BaseHTTPMiddleware puts extra tasks and a copy of every streamed chunk in
    the path, which hundreds of open live streams pay for."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cid = Headers(scope=scope).get(CORRELATION_HEADER) or str(uuid.uuid4())
        scope.setdefault("state", {})["correlation_id"] = cid
        token = logs.correlation_id.set(cid)
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        def observe(code: int) -> None:
            path = getattr(scope.get("route"), "path", "unmatched")
            took = time.perf_counter() - started
            HTTP_REQUESTS.labels(self.service, scope["method"], path, str(code)).observe(took)
            if took > SLOW_ANSWER_S:
                log.warning(
                    "slow answer: %s %s %d in %.1f s", scope["method"], scope["path"], code, took
                )

        async def send_tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append(CORRELATION_HEADER, cid)
                observe(status)  # time to the answer's head (a live stream goes on after)
            await send(message)

        try:
            await self.app(scope, receive, send_tagged)
        except BaseException:
            observe(status)
            raise
        finally:
            logs.correlation_id.reset(token)


class BodyCeiling:
    """Refuse a body larger than the ceiling (413): at once when its Content-Length says so,
    else (a chunked body has none) as soon as the bytes read pass it, so no body is ever held
    whole before authentication. Plain ASGI, as `CorrelateAndMeasure`."""

    def __init__(self, app: ASGIApp, ceiling: int) -> None:
        self.app, self.ceiling = app, ceiling

    def refusal(self) -> ASGIApp:
        return error_response(
            413, "too_large", f"request bodies are limited to {self.ceiling} bytes"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.ceiling):
            await self.refusal()(scope, receive, send)
            return
        read, started, refused = 0, False, False

        async def counted() -> Message:
            nonlocal read, refused
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > self.ceiling:
                    if not started and not refused:
                        refused = True
                        await self.refusal()(scope, receive, send)
                    # The app stops reading as if the client had gone; after the refusal,
                    # what it answers is dropped below.
                    return {"type": "http.disconnect"}
            return message

        async def answered(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = True
            await send(message)

        await self.app(scope, counted, answered)


def install_middleware(app: FastAPI, service: str, max_body_bytes: int) -> None:
    app.add_middleware(CorrelateAndMeasure, service=service)
    # In every service, not the gateway alone: a body is read (to check the caller's
    # signature, say) only once it is known to be of a sane size.
    app.add_middleware(BodyCeiling, ceiling=max_body_bytes)
