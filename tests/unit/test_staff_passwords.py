"""Staff passwords are checked off the event loop, and an unknown e-mail is checked against a
stand-in hash, so a sign-in neither stops the gateway nor tells which e-mails exist."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from pydantic import ValidationError

from services.gateway.security import hash_password, password_checked, stand_in_hash
from services.gateway.signin import OpsIn, add_staff
from shared.mongo import Database


async def test_the_right_password_matches_and_a_wrong_one_or_an_unknown_account_does_not() -> None:
    stored = hash_password("correct horse battery")
    assert await password_checked("correct horse battery", stored)
    assert not await password_checked("correct horse batterz", stored)
    assert not await password_checked("correct horse battery", None)
    # Nothing typed matches the stand-in, not even the empty password.
    assert not await password_checked("", None)
    assert stand_in_hash() == stand_in_hash()  # made once, then reused


async def test_the_event_loop_keeps_serving_while_a_password_is_checked() -> None:
    stored = hash_password("correct horse battery")
    ticks = 0
    checking = True

    async def other_requests() -> None:
        nonlocal ticks
        while checking:
            await asyncio.sleep(0.001)
            ticks += 1

    served = asyncio.create_task(other_requests())
    for _ in range(3):  # scrypt costs tens of ms each time
        assert not await password_checked("wrong password", stored)
    checking = False
    await served
    # On the loop, scrypt would have left no turn to anyone else until it finished.
    assert ticks >= 5, ticks


@pytest.mark.parametrize("email", ["josé@doorstep.pt", "ops@dóorstep.pt", "two@@at.pt", "a b@c.pt"])
async def test_a_staff_e_mail_is_plain_ascii_at_sign_in_and_when_made(email: str) -> None:
    """It travels to the services as the caller's id in a header, which reads the same at
    both ends only in ASCII."""
    with pytest.raises(ValidationError):
        OpsIn(email=email, password="long enough")
    with pytest.raises(ValueError, match="not a staff e-mail"):
        await add_staff(cast(Database, None), email, "long enough")  # refused before any I/O
    assert OpsIn(email="ops+night@doorstep.pt", password="long enough")
