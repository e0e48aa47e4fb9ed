"""In-process turns for work that would only collide in MongoDB anyway.

Transactions that write the same document (a store's receipt chain head) cannot
both commit: the loser is retried from the start, at once. A handful of such
requests arriving together in one process turns into a storm of retries that can
last tens of seconds on a busy machine (seen in the fault run: one signature
retried by its app piled up for 87 s). Taking turns per key in the process
first lets each transaction commit on its first try; transactions from other
processes still meet in MongoDB, where the retry stays correct.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class KeyedLocks:
    """One asyncio lock per key, made when first needed and dropped when nobody holds or
    waits for it (so a key used once costs nothing afterwards)."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if self._users[key] == 0:
                del self._users[key], self._locks[key]
