"""Per-key turns in one process (shared/locks.py)."""

from __future__ import annotations

import asyncio

import pytest

from shared.locks import KeyedLocks


async def test_holders_of_one_key_take_turns_and_other_keys_do_not_wait() -> None:
    locks = KeyedLocks()
    inside: dict[str, int] = {"a": 0, "b": 0}
    most: dict[str, int] = {"a": 0, "b": 0}
    b_done = asyncio.Event()

    async def work(key: str) -> None:
        async with locks.hold(key):
            inside[key] += 1
            most[key] = max(most[key], inside[key])
            if key == "a":
                await asyncio.wait_for(b_done.wait(), 1)  # "b" gets through while "a" is held
            await asyncio.sleep(0.01)
            inside[key] -= 1
        if key == "b":
            b_done.set()

    await asyncio.gather(work("a"), work("a"), work("a"), work("b"))
    assert most == {"a": 1, "b": 1}


async def test_a_key_nobody_holds_or_waits_for_is_forgotten() -> None:
    locks = KeyedLocks()
    async with locks.hold("store_1"):
        assert len(locks) == 1
    assert len(locks) == 0

    async def fail() -> None:
        async with locks.hold("store_2"):
            raise RuntimeError("the work failed")

    with pytest.raises(RuntimeError):
        await fail()
    assert len(locks) == 0
