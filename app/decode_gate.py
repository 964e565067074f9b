"""How many uploads decode at once, and how many requests may wait for a turn.

A decoded image costs its full size in memory (a 40 Mpx PNG: 120 MB as RGB) however small its
file, so decodes are bounded, not just file sizes: ``slots`` run at once, ``queue`` more wait, and
a request beyond that is refused at once with 429 rather than held in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from app.errors import ApiError


class DecodeGate:
    """A semaphore with a bounded waiting line."""

    def __init__(self, slots: int, queue: int) -> None:
        self.slots = slots
        self.queue = queue
        self._free = asyncio.Semaphore(slots)
        self._waiting = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._free.locked() and self._waiting >= self.queue:
            raise ApiError(
                429,
                "busy",
                f"the server is decoding {self.slots} images and {self._waiting} more wait "
                "(CLIPSEARCH_MAX_CONCURRENT_DECODES, CLIPSEARCH_MAX_QUEUED_DECODES); retry in a "
                "moment",
                headers={"Retry-After": "1"},
            )
        self._waiting += 1
        try:
            await self._free.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._free.release()
