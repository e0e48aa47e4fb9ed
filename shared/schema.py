"""Schema pieces every service's models use."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Header, Path
from pydantic import BaseModel, ConfigDict


class Forbid(BaseModel):
    """Every request and stored model refuses unknown fields (no mass assignment)."""

    model_config = ConfigDict(extra="forbid")


# An object id in a URL path: short, and nothing that could be an operator or a path.
PathId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


def idempotency_key(never: str) -> Any:
    """The `Idempotency-Key` header of a create that a client may retry (the gateway
    retries such a POST too): the same key returns the first result, never `never`."""
    return Header(
        alias="Idempotency-Key",
        min_length=8,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description=f"Retries with the same key return the first result, never {never}",
    )
