"""Personal data: one phone type, and the masked form shown to those who may not see it whole."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

Phone = Annotated[
    str,
    Field(pattern=r"^\+[1-9][0-9]{6,14}$", examples=["+351912345678"], description="E.164"),
]


def mask_phone(phone: str) -> str:
    """`+351912345678` -> `+351 ••• ••• •78`: enough to recognise a call, not to keep the number.

    The first digits after the plus (the country code, three at most) and the last two
    stay; the rest is gone, so the masked form cannot be turned back into the number.
    """
    digits = phone.removeprefix("+")
    prefix = digits[: min(3, max(len(digits) - 6, 1))]
    hidden = len(digits) - len(prefix) - 2
    masked = "•" * hidden + digits[-2:]
    groups = [masked[max(i - 3, 0) : i] for i in range(len(masked), 0, -3)][::-1]
    return f"+{prefix} " + " ".join(groups)
