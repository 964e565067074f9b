"""Dynamic batching: requests that arrive together share one model call.

A text query costs about the same to encode alone as in a batch of dozens (small matmuls are
overhead-bound) and a batched FAISS search is one matrix product instead of many, so throughput
grows with concurrency. The first request of a batch waits at most ``window_s`` for company;
requests that queued while the previous batch ran go at once, and a lone client pays no wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# ``process`` returns one result per item; an item's result may be an exception to raise for it.
ProcessFn = Callable[[Sequence[T]], Sequence["R | BaseException"]]


@dataclass
class _Pending(Generic[T]):
    item: T
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher(Generic[T, R]):
    """Runs ``process`` on batches of submitted items in ``executor``, one batch at a time."""

    def __init__(
        self,
        process: ProcessFn,
        executor: Executor,
        window_s: float = 0.002,
        max_batch: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.process = process
        self.executor = executor
        self.window_s = window_s
        self.max_batch = max_batch
        self.on_batch = on_batch
        self._queue: deque[_Pending[T]] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._last_size = 0

    def start(self) -> None:
        """Start the worker on the running loop (call from the lifespan)."""
        if self._task is None:
            self._arrived = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        """Stop the worker; requests still queued fail with ``RuntimeError``."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the service is shutting down"))

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait for its result."""
        if self._task is None or self._arrived is None:
            raise RuntimeError("the batcher is not running")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(item, future))
        self._arrived.set()
        return await future

    async def _wait(self, timeout: float | None) -> bool:
        """Wait until something is queued; False when ``timeout`` passed first."""
        assert self._arrived is not None
        while not self._queue:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except asyncio.TimeoutError:
                return bool(self._queue)
        return True

    async def _collect(self) -> list[_Pending[T]]:
        await self._wait(None)
        first = self._queue.popleft()
        batch = [first]
        # Wait for company only while it is likely to come: under load (the last batch was
        # shared) or when others are already queued. A lone sequential client never waits.
        wait = self.window_s if (self._last_size > 1 or self._queue) else 0.0
        deadline = first.enqueued + wait
        while len(batch) < self.max_batch:
            if self._queue:
                batch.append(self._queue.popleft())
                continue
            left = deadline - time.perf_counter()
            if left <= 0 or not await self._wait(left):
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [p for p in batch if not p.future.done()]  # drop requests cancelled meanwhile
            self._last_size = len(live)
            if not live:
                continue
            if self.on_batch is not None:
                self.on_batch(len(live))
            try:
                results = await loop.run_in_executor(
                    self.executor, self.process, [p.item for p in live]
                )
                if len(results) != len(live):
                    raise RuntimeError(f"batch of {len(live)} gave {len(results)} results")
            except asyncio.CancelledError:
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(RuntimeError("the service is shutting down"))
                raise
            except Exception as e:
                results = [e] * len(live)
            for p, result in zip(live, results, strict=True):
                if p.future.done():
                    continue
                if isinstance(result, BaseException):
                    p.future.set_exception(result)
                else:
                    p.future.set_result(result)
