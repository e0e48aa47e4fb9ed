"""Who is calling a service, and the object-level checks every service makes.

The gateway authenticates the caller (customer or technician token, a store's
API key, an operations session) and forwards the identity it verified in the
`X-Actor-*` headers. Services never trust a client for *which objects* it may
touch: every handler checks the actor against the object's owner.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import Depends, Header
from pydantic import BaseModel, ConfigDict

from shared.errors import Forbidden, Unauthenticated


class Role(StrEnum):
    CUSTOMER = "customer"
    TECHNICIAN = "technician"
    STORE = "store"  # a partner store (API key)
    OPS = "ops"  # operations staff


class Actor(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Role
    subject: str  # the customer, technician, store or staff member id
    store_id: str | None = None  # a technician's or a store key's store

    @property
    def is_ops(self) -> bool:
        return self.role is Role.OPS

    def speaks_for_store(self, store_id: str | None) -> bool:
        """Operations, or that very store (its API key): who manages a store's own things."""
        return self.is_ops or (
            self.role is Role.STORE and store_id is not None and self.store_id == store_id
        )

    def store_scope(self, asked: str | None = None, *, what: str = "this") -> dict[str, str]:
        """The filter a listing runs under: operations see every store (or the one they ask
        for), a store only its own; anyone else is refused."""
        if self.is_ops:
            return {} if asked is None else {"store_id": asked}
        if self.role is Role.STORE and self.store_id and asked in (None, self.store_id):
            return {"store_id": self.store_id}
        raise Forbidden(f"{what} is for operations, and for a store about its own technicians")

    def headers(self) -> dict[str, str]:
        """How this identity travels from the gateway to a service."""
        out = {"X-Actor-Role": self.role.value, "X-Actor-Id": self.subject}
        if self.store_id:
            out["X-Actor-Store"] = self.store_id
        return out

    def require(self, *roles: Role) -> None:
        if self.role not in roles:
            allowed = ", ".join(r.value for r in roles)
            raise Forbidden(f"a {self.role.value} may not do this (only {allowed})")


async def current_actor(
    x_actor_role: Annotated[str | None, Header()] = None,
    x_actor_id: Annotated[str | None, Header()] = None,
    x_actor_store: Annotated[str | None, Header()] = None,
) -> Actor:
    if not x_actor_role or not x_actor_id:
        raise Unauthenticated("this call needs an authenticated caller")
    try:
        role = Role(x_actor_role)
    except ValueError:
        raise Unauthenticated(f"unknown role {x_actor_role!r}") from None
    if role is Role.STORE and not x_actor_store:
        x_actor_store = x_actor_id  # a store key acts for its own store
    return Actor(role=role, subject=x_actor_id, store_id=x_actor_store)


ActorDep = Annotated[Actor, Depends(current_actor)]


def ops() -> Actor:
    return Actor(role=Role.OPS, subject="ops")
