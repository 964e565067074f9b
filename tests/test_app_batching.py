"""The dynamic batcher on its own: coalescing, isolation of failures, cancellation, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.batching import Batcher


class Recorder:
    """A ``process`` that doubles numbers, remembers batch sizes and can fail chosen items."""

    def __init__(self, delay: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.delay = delay
        self.threads: set[str] = set()

    def __call__(self, items):
        self.sizes.append(len(items))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        return [ValueError(f"bad {x}") if x < 0 else x * 2 for x in items]


def run(coro):
    return asyncio.run(coro)


async def _with_batcher(process, window_s, max_batch, body):
    executor = ThreadPoolExecutor(1, thread_name_prefix="test-infer")
    batcher = Batcher(process, executor, window_s=window_s, max_batch=max_batch)
    batcher.start()
    try:
        return await body(batcher)
    finally:
        await batcher.stop()
        executor.shutdown()


def test_concurrent_requests_share_batches_and_get_their_own_results():
    rec = Recorder(delay=0.01)

    async def body(b):
        return await asyncio.gather(*(b.submit(i) for i in range(40)))

    results = run(_with_batcher(rec, 0.005, 16, body))
    assert results == [i * 2 for i in range(40)]
    assert max(rec.sizes) > 1, rec.sizes
    assert max(rec.sizes) <= 16
    assert sum(rec.sizes) == 40
    assert rec.threads == {"test-infer_0"}  # never the event loop's thread


def test_lone_sequential_client_is_not_delayed_by_the_window():
    rec = Recorder()

    async def body(b):
        t0 = time.perf_counter()
        for i in range(5):
            assert await b.submit(i) == 2 * i
        return time.perf_counter() - t0

    elapsed = run(_with_batcher(rec, 0.5, 32, body))
    assert rec.sizes == [1] * 5
    assert elapsed < 1.0  # five waits of the 0.5 s window would take 2.5 s


def test_max_batch_one_turns_batching_off():
    rec = Recorder(delay=0.002)

    async def body(b):
        return await asyncio.gather(*(b.submit(i) for i in range(10)))

    run(_with_batcher(rec, 0.01, 1, body))
    assert rec.sizes == [1] * 10


def test_a_failing_item_fails_alone():
    rec = Recorder()

    async def body(b):
        return await asyncio.gather(*(b.submit(i) for i in (1, -1, 2)), return_exceptions=True)

    ok1, bad, ok2 = run(_with_batcher(rec, 0.01, 8, body))
    assert (ok1, ok2) == (2, 4)
    assert isinstance(bad, ValueError) and "bad -1" in str(bad)


def test_a_crashing_process_fails_the_batch_but_not_the_worker():
    calls = []

    def process(items):
        calls.append(list(items))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return items

    async def body(b):
        with pytest.raises(RuntimeError, match="boom"):
            await b.submit(1)
        return await b.submit(7)

    assert run(_with_batcher(process, 0.0, 8, body)) == 7


def test_cancelled_requests_are_dropped_and_others_still_answered():
    rec = Recorder(delay=0.05)

    async def body(b):
        first = asyncio.ensure_future(b.submit(1))  # occupies the worker
        await asyncio.sleep(0.01)
        doomed = asyncio.ensure_future(b.submit(2))
        kept = asyncio.ensure_future(b.submit(3))
        await asyncio.sleep(0)
        doomed.cancel()
        return await first, await kept

    assert run(_with_batcher(rec, 0.0, 8, body)) == (2, 6)
    assert sum(rec.sizes) == 2  # the cancelled item was never processed


def test_submit_before_start_says_so():
    b = Batcher(Recorder(), ThreadPoolExecutor(1))
    with pytest.raises(RuntimeError, match="not running"):
        run(b.submit(1))
