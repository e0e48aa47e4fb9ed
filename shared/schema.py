"""Schema pieces every service's models use."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Header, Path
from pydantic import BaseModel, ConfigDict


class Forbid(BaseModel):
    """Every request and stored model refuses unknown fields (no mass assignment)."""

    model_config = ConfigDict(extra="forbid")


# An object id in a URL path: short, and nothing that could be an operator or a path.
PATH_ID_MAX = 64
PathId = Annotated[str, Path(min_length=1, max_length=PATH_ID_MAX, pattern=r"^[A-Za-z0-9_.:-]+$")]


def idempotency_key(never: str, max_length: int = 128) -> Any:
    """The `Idempotency-Key` header of a create that a client may retry (the gateway
    retries such a POST too): the same key returns the first result, never `never`. A key
    that becomes the id of what it made is no longer than a `PathId`."""
    return Header(
        alias="Idempotency-Key",
        min_length=8,
        max_length=max_length,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description=f"Retries with the same key return the first result, never {never}",
    )
