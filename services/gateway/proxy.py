"""The services' own routes, offered under /v1 by the gateway: solved once, not per route.

For each route a service publishes to the outside, the gateway declares the same
path (under /v1), the same parameters and body model (so bad input is refused at
the edge with the same 422, and the OpenAPI document shows them), and forwards
the call as the caller it verified. Services check every object against that
caller (`shared/auth.py`); a route whose service endpoint takes no caller (a
public price list, receipt verification) is public here too, limited per
address.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.routing import APIRoute

from services.gateway.security import edge_actor, signin_limited
from services.gateway.upstream import Upstream, UpstreamError
from shared.auth import Actor, current_actor
from shared.service import get_runtime

PASSED_REQUEST_HEADERS = {
    "idempotency-key": "Idempotency-Key",
    "if-match": "If-Match",
    "content-type": "Content-Type",
}
PASSED_RESPONSE_HEADERS = ("etag",)
REQUEST, CALLER = "gateway_request", "gateway_caller"


def _is(annotation: Any, dependency: Callable[..., Any]) -> bool:
    """Does this parameter's annotation depend on `dependency` (ActorDep, RuntimeDep)?"""
    for extra in getattr(annotation, "__metadata__", ()):
        if getattr(extra, "dependency", None) is dependency:
            return True
    return False


def forwarding(service: str, route: APIRoute) -> tuple[Callable[..., Awaitable[Response]], bool]:
    """An endpoint with the service route's parameters that forwards to it; and whether it
    needs a signed-in caller."""
    hints = typing.get_type_hints(route.endpoint, include_extras=True)
    original = inspect.signature(route.endpoint)
    kept: list[inspect.Parameter] = []
    needs_caller = False
    for name, param in original.parameters.items():
        annotation = hints.get(name, param.annotation)
        if _is(annotation, current_actor):
            needs_caller = True
            continue
        if _is(annotation, get_runtime) or annotation in (Request, Response):
            continue
        kept.append(param.replace(annotation=annotation, kind=inspect.Parameter.KEYWORD_ONLY))
    # Named so as not to clash with a service's own parameters (booking's body is `request`).
    kept.append(inspect.Parameter(REQUEST, inspect.Parameter.KEYWORD_ONLY, annotation=Request))
    if needs_caller:
        kept.append(
            inspect.Parameter(
                CALLER,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Actor,
                default=Depends(edge_actor),
            )
        )

    async def endpoint(**values: Any) -> Response:
        request: Request = values[REQUEST]
        caller: Actor | None = values.get(CALLER)
        upstream: Upstream = request.app.state.upstream
        path = request.url.path.removeprefix("/v1")
        headers = {
            PASSED_REQUEST_HEADERS[h.lower()]: v
            for h, v in request.headers.items()
            if h.lower() in PASSED_REQUEST_HEADERS
        }
        if caller is not None:
            headers.update(caller.headers())
        body = await request.body()
        answer = await upstream.call(
            service,
            request.method,
            path,
            params=dict(request.query_params),
            content=body or None,
            headers=headers,
        )
        if answer.status_code == 204:
            return Response(status_code=204)
        if answer.content and not answer.is_json:
            raise UpstreamError.from_response(answer)
        passed = {h: answer.headers[h] for h in PASSED_RESPONSE_HEADERS if h in answer.headers}
        # The service's JSON is passed on as it came: parsing and writing it again would
        # cost the busiest process CPU and change nothing.
        return Response(
            content=answer.content or b"null",
            status_code=answer.status_code,
            headers=passed,
            media_type="application/json",
        )

    endpoint.__signature__ = inspect.Signature(kept)  # type: ignore[attr-defined]
    endpoint.__name__ = f"{service}_{route.name}"
    return endpoint, needs_caller


def offer(router: APIRouter, service: str, source: APIRouter, *, skip: set[str]) -> None:
    """Add every route of `source` (but the `skip` paths) to `router`, forwarded to `service`."""
    for route in source.routes:
        if not isinstance(route, APIRoute) or route.path in skip:
            continue
        endpoint, needs_caller = forwarding(service, route)
        router.add_api_route(
            route.path,
            endpoint,
            methods=sorted(route.methods or ()),
            status_code=route.status_code,
            response_model=route.response_model,
            summary=route.summary,
            description=route.description,
            tags=[str(t) for t in route.tags] or [service],
            dependencies=[] if needs_caller else [Depends(signin_limited)],
            responses=route.responses,
            operation_id=f"{service}_{route.name}",
        )
