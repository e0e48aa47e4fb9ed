"""Schema pieces every service's models use."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from pydantic import BaseModel, ConfigDict


class Forbid(BaseModel):
    """Every request and stored model refuses unknown fields (no mass assignment)."""

    model_config = ConfigDict(extra="forbid")


# An object id in a URL path: short, and nothing that could be an operator or a path.
PathId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
