"""Dynamic micro-batching: images from concurrent requests share one model call.

Owns :class:`MicroBatcher`. A request puts its preprocessed images on an asyncio queue and
awaits their probabilities; one collector task takes the first waiting image, then keeps
taking until ``max_batch`` images or ``max_wait_s`` have passed, and runs the model on the
stacked batch in a single worker thread (off the event loop, so requests keep being read
while the model runs; one call at a time, since the model's own threads use the cores).
Each image's row of the result goes back to the request that sent it, in its order.

What the window waits for is ``wait_for``. ``"any"``: any image that arrives before the
deadline (Triton's and TorchServe's fixed delay). ``"announced"`` (the server's default): only
images already announced as on their way (:meth:`MicroBatcher.announce`: a request whose images
are being decoded), so the model never idles for arrivals nobody knows of. On the 2-core CPU,
2 workers, 32 clients, a 5 ms window for any arrival left the model idle: 0.78x in-process
images/s; running at once gave 0.88x (benchmarks/bench_serve.py, docs/deployment.md).

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


WAIT_FOR = ("any", "announced")


@dataclass
class _Item:
    array: np.ndarray
    future: asyncio.Future


class Ticket:
    """Images on their way to the batcher (:meth:`MicroBatcher.announce`); ``release()`` (or
    submitting with it) says they are here or will not come. Idempotent."""

    def __init__(self, batcher: "MicroBatcher", n: int) -> None:
        self.batcher, self.n = batcher, int(n)
        batcher.announced += self.n

    def release(self) -> None:
        if self.n:
            self.batcher.announced -= self.n
            self.n = 0
            self.batcher._wake()


class MicroBatcher:
    """``await batcher.submit(arrays)`` -> (len(arrays), C) probabilities.

    ``on_batch(size, seconds)`` is called after each model call (metrics).
    """

    def __init__(self, probs: Callable[[np.ndarray], np.ndarray], *, max_batch: int = 32, max_wait_s: float = 0.005,
                 wait_for: str = "any", on_batch: Optional[Callable[[int, float], None]] = None) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_s >= 0")
        if wait_for not in WAIT_FOR:
            raise ValueError(f"wait_for must be one of {', '.join(WAIT_FOR)}, not {wait_for!r}")
        self.probs, self.max_batch, self.max_wait_s, self.on_batch = probs, int(max_batch), float(max_wait_s), on_batch
        self.wait_for = wait_for
        self.announced = 0  # images announced and not yet submitted
        self.queue: Optional[asyncio.Queue] = None
        self.task: Optional[asyncio.Task] = None
        self.changed: Optional[asyncio.Event] = None
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tinlt-model")

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.changed = asyncio.Event()
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

    def announce(self, n: int) -> Ticket:
        """``n`` images will be submitted soon (they are being decoded): under ``wait_for="announced"``
        an open window waits for them. Release the ticket (or submit with it) in every case."""
        return Ticket(self, n)

    def _wake(self) -> None:
        if self.changed is not None:
            self.changed.set()

    async def submit(self, arrays: Sequence[np.ndarray], ticket: Optional[Ticket] = None) -> np.ndarray:
        if self.queue is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        loop = asyncio.get_running_loop()
        items = [_Item(a, loop.create_future()) for a in arrays]
        for it in items:
            self.queue.put_nowait(it)
        if ticket is not None:
            ticket.release()  # after the puts: the collector sees them before the count drops
        self._wake()
        rows = await asyncio.gather(*(it.future for it in items))
        return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0 or (self.wait_for == "announced" and self.announced <= 0):
                    break
                self.changed.clear()
                try:  # woken by a submit or a released ticket
                    await asyncio.wait_for(self.changed.wait(), left)
                except asyncio.TimeoutError:
                    pass
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
