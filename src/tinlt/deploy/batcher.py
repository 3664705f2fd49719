"""Dynamic micro-batching: images from concurrent requests share one model call.

Owns :class:`MicroBatcher`. A request puts its preprocessed images on an asyncio queue and
awaits their probabilities; one collector task takes the first waiting image, then keeps
taking until ``max_batch`` images or ``max_wait_s`` have passed, and runs the model on the
stacked batch in a single worker thread (off the event loop, so requests keep being read
while the model runs; one call at a time, since the model's own threads use the cores).
Each image's row of the result goes back to the request that sent it, in its order.

A failed model call fails only the images of that batch (their requests get the error);
the collector keeps running. No torch: the backend is any object with ``probs(batch)``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np


@dataclass
class _Item:
    array: np.ndarray
    future: asyncio.Future


class MicroBatcher:
    """``await batcher.submit(arrays)`` -> (len(arrays), C) probabilities.

    ``on_batch(size, seconds)`` is called after each model call (metrics).
    """

    def __init__(self, probs: Callable[[np.ndarray], np.ndarray], *, max_batch: int = 32, max_wait_s: float = 0.005,
                 on_batch: Optional[Callable[[int, float], None]] = None) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_s >= 0")
        self.probs, self.max_batch, self.max_wait_s, self.on_batch = probs, int(max_batch), float(max_wait_s), on_batch
        self.queue: Optional[asyncio.Queue] = None
        self.task: Optional[asyncio.Task] = None
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tinlt-model")

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._collect())

    async def stop(self) -> None:
        """Finish what is queued, then stop (after the server stopped taking requests)."""
        if self.queue is not None:
            await self.queue.join()
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.pool.shutdown(wait=True)

    async def submit(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        if self.queue is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        loop = asyncio.get_running_loop()
        items = [_Item(a, loop.create_future()) for a in arrays]
        for it in items:
            self.queue.put_nowait(it)
        rows = await asyncio.gather(*(it.future for it in items))
        return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                left = deadline - loop.time()
                try:
                    batch.append(self.queue.get_nowait() if left <= 0 else await asyncio.wait_for(self.queue.get(), left))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
            await self._run(loop, batch)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        t0 = time.perf_counter()
        try:
            out = await loop.run_in_executor(self.pool, self.probs, np.stack([it.array for it in batch]))
        except Exception as e:  # noqa: BLE001 - the batch's requests get the error; the collector goes on
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(e)
        else:
            for i, it in enumerate(batch):
                if not it.future.done():  # a request that went away leaves its future cancelled
                    it.future.set_result(out[i])
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - t0)
        finally:
            for _ in batch:
                self.queue.task_done()
