"""The shared error handlers: MongoDB being away is a 503 to retry, not a 500."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from pymongo.errors import OperationFailure, ServerSelectionTimeoutError

from shared.http import install_error_handlers, install_middleware


def app_raising(exc: Exception) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    install_middleware(app, "test", 64 * 1024)

    @app.get("/thing")
    async def thing() -> None:
        raise exc

    return app


async def get(app: FastAPI) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        return await http.get("/thing")


async def test_an_unreachable_database_answers_503_with_retry_after() -> None:
    r = await get(app_raising(ServerSelectionTimeoutError("127.0.0.1:27017: refused")))
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "service_unavailable"
    assert r.headers["Retry-After"] == "1"
    assert "27017" not in r.text  # no internals


async def test_a_transient_transaction_error_answers_503() -> None:
    exc = OperationFailure("WriteConflict", code=112, details={"errorLabels": []})
    exc._add_error_label("TransientTransactionError")
    r = await get(app_raising(exc))
    assert r.status_code == 503, r.text


async def test_any_other_database_error_is_a_500_with_the_correlation_id() -> None:
    r = await get(app_raising(OperationFailure("bad query", code=2)))
    assert r.status_code == 500, r.text
    error = r.json()["error"]
    assert error["code"] == "internal_error"
    assert r.headers["X-Correlation-ID"] in error["message"]
    assert "bad query" not in r.text
