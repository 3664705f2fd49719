"""The serving micro-batcher (deploy/batcher.py) on its own, with a model whose answer names
its input: every row must go back to the request that sent it, in that request's order.

The fake model returns, for each image, the image's own id and the size of the batch it was
in, so a mix-up between requests, a batch over ``max_batch`` or a missed deadline shows up
in the answers themselves rather than in a counter.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from tinlt.deploy.batcher import MicroBatcher


class Model:
    """probs(batch) -> one row per image: [image id, batch size]; records every call."""

    def __init__(self, delay: float = 0.0, poison: float | None = None) -> None:
        self.calls: list[list[float]] = []
        self.delay, self.poison = delay, poison
        self.threads: set[str] = set()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        ids = [float(a[0]) for a in batch]
        self.calls.append(ids)
        self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        if self.poison is not None and self.poison in ids:
            raise RuntimeError("model failed on this batch")
        return np.stack([np.array([i, len(batch)], dtype=np.float32) for i in ids])


def _image(i: float) -> np.ndarray:
    return np.array([i, -i], dtype=np.float32)  # distinct per image


def run(coro, timeout: float = 20.0):
    """Run ``coro``; a batcher that stops answering fails the test instead of hanging it."""
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def test_each_client_gets_its_own_rows_in_its_own_order():
    model = Model(delay=0.01)

    async def main():
        b = MicroBatcher(model, max_batch=8, max_wait_s=0.02)
        await b.start()
        # 20 clients, each sending 1-5 distinct images, all at once
        requests = {c: [100 * c + k for k in range(1 + c % 5)] for c in range(20)}
        answers = await asyncio.gather(*(b.submit([_image(i) for i in ids]) for ids in requests.values()))
        await b.stop()
        return requests, answers

    requests, answers = run(main())
    for (c, ids), rows in zip(requests.items(), answers):
        assert rows.shape == (len(ids), 2)
        assert rows[:, 0].tolist() == ids, f"client {c} got another client's rows"
    # the images were batched together: fewer model calls than images, none over max_batch
    n_images = sum(len(v) for v in requests.values())
    assert sum(len(c) for c in model.calls) == n_images
    assert len(model.calls) < n_images and max(len(c) for c in model.calls) == 8
    # the batch size each image reports is the size of the call it was in
    sizes = {i: len(call) for call in model.calls for i in call}
    for ids, rows in zip(requests.values(), answers):
        assert rows[:, 1].tolist() == [sizes[i] for i in ids]


def test_a_batch_never_exceeds_max_batch_even_for_one_large_request():
    model = Model()

    async def main():
        b = MicroBatcher(model, max_batch=3, max_wait_s=0.05)
        await b.start()
        rows = await b.submit([_image(i) for i in range(10)])
        await b.stop()
        return rows

    rows = run(main())
    assert rows[:, 0].tolist() == list(range(10))
    assert [len(c) for c in model.calls] == [3, 3, 3, 1]
    assert [i for c in model.calls for i in c] == list(range(10))  # queue order kept


def test_max_wait_gathers_late_images_and_bounds_the_wait():
    model = Model()

    async def main(max_wait):
        b = MicroBatcher(model, max_batch=32, max_wait_s=max_wait)
        await b.start()
        t0 = time.perf_counter()
        first = asyncio.ensure_future(b.submit([_image(1)]))
        await asyncio.sleep(0.05)  # a second client arrives 50 ms later
        second = asyncio.ensure_future(b.submit([_image(2)]))
        await asyncio.gather(first, second)
        waited = time.perf_counter() - t0
        await b.stop()
        return waited

    # a 1 s window: both images share one call, and the call happens at the deadline, not later
    waited = run(main(1.0))
    assert model.calls == [[1.0, 2.0]]
    assert 0.9 <= waited < 3.0
    # no window: the first image goes alone, without waiting for the second
    model.calls.clear()
    run(main(0.0))
    assert model.calls == [[1.0], [2.0]]


def _announced_run(model, events):
    """Client 1 submits at t=0; client 2 announces at t=0 (``announce``) and then, after
    ``events['delay']`` s, submits (``"submit"``) or gives up (``"release"``)."""
    async def main():
        b = MicroBatcher(model, max_batch=32, max_wait_s=events["window"], wait_for="announced")
        await b.start()
        t0 = time.perf_counter()
        ticket = b.announce(1) if events["announce"] else None
        first = asyncio.ensure_future(b.submit([_image(1)]))
        await asyncio.sleep(events["delay"])
        if events["then"] == "submit":
            await asyncio.gather(first, b.submit([_image(2)], ticket))
        else:
            if ticket is not None:
                ticket.release()
                ticket.release()  # twice: counted once
            await first
        waited = time.perf_counter() - t0
        left = b.announced
        await b.stop()
        return waited, left

    return run(main())


def test_an_announced_image_is_waited_for_and_nothing_else():
    """wait_for="announced": the window waits only for images on their way (being decoded)."""
    model = Model()
    # announced, arrives 0.3 s later within a 2 s window: one call, made when it arrives, not at the deadline
    waited, left = _announced_run(model, {"window": 2.0, "announce": True, "delay": 0.3, "then": "submit"})
    assert model.calls == [[1.0, 2.0]] and 0.25 <= waited < 1.5 and left == 0
    # not announced: the first image goes at once, alone (the "any" window would have taken both)
    model.calls.clear()
    waited, left = _announced_run(model, {"window": 2.0, "announce": False, "delay": 0.3, "then": "submit"})
    assert model.calls == [[1.0], [2.0]] and left == 0
    # announced, then given up (its decode failed) after 0.3 s: the wait ends then, not at the 2 s deadline
    model.calls.clear()
    waited, left = _announced_run(model, {"window": 2.0, "announce": True, "delay": 0.3, "then": "release"})
    assert model.calls == [[1.0]] and 0.25 <= waited < 1.5 and left == 0
    # announced but late: the window still bounds the wait
    model.calls.clear()
    waited, left = _announced_run(model, {"window": 0.2, "announce": True, "delay": 0.8, "then": "submit"})
    assert model.calls == [[1.0], [2.0]] and left == 0


def test_the_window_opens_with_the_first_image_and_does_not_restart():
    """Arrivals every 0.4 s against a 1 s window: the first call holds the images that came
    before its deadline (t = 0, 0.4, 0.8), not every image that came within 1 s of the last."""
    model = Model()

    async def main():
        b = MicroBatcher(model, max_batch=32, max_wait_s=1.0)
        await b.start()
        pending = []
        for i in range(6):
            pending.append(asyncio.ensure_future(b.submit([_image(i)])))
            await asyncio.sleep(0.4)
        await asyncio.gather(*pending)
        await b.stop()

    run(main())
    assert model.calls[0] == [0.0, 1.0, 2.0]
    assert [i for c in model.calls for i in c] == [float(i) for i in range(6)]


def test_a_model_error_fails_only_its_own_batch():
    model = Model(poison=7.0)

    async def main():
        b = MicroBatcher(model, max_batch=4, max_wait_s=0.0)
        await b.start()
        bad = await asyncio.gather(b.submit([_image(7), _image(8)]), return_exceptions=True)
        good = await b.submit([_image(9), _image(10)])  # the collector survived
        # a request that went away (cancelled) does not break the next one either
        gone = asyncio.ensure_future(b.submit([_image(11)]))
        await asyncio.sleep(0)
        gone.cancel()
        after = await b.submit([_image(12)])
        await b.stop()
        return bad, good, after

    bad, good, after = run(main())
    assert isinstance(bad[0], RuntimeError) and "failed on this batch" in str(bad[0])
    assert good[:, 0].tolist() == [9.0, 10.0] and after[:, 0].tolist() == [12.0]


def test_the_model_runs_off_the_event_loop_one_call_at_a_time():
    model = Model(delay=0.2)
    ticks = []

    async def ticker():
        for _ in range(10):
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.02)

    async def main():
        b = MicroBatcher(model, max_batch=2, max_wait_s=0.0)
        await b.start()
        loop_thread = threading.current_thread().name
        await asyncio.gather(b.submit([_image(i) for i in range(4)]), ticker())
        await b.stop()
        return loop_thread

    loop_thread = run(main())
    assert loop_thread not in model.threads and len(model.threads) == 1
    # the loop kept ticking while the model slept for 2 x 0.2 s
    assert max(np.diff(ticks)) < 0.15


def test_bad_settings_and_use_before_start():
    with pytest.raises(ValueError):
        MicroBatcher(Model(), max_batch=0)
    with pytest.raises(ValueError):
        MicroBatcher(Model(), max_wait_s=-1)
    with pytest.raises(ValueError, match="announced"):
        MicroBatcher(Model(), wait_for="late")

    async def main():
        await MicroBatcher(Model()).submit([_image(1)])

    with pytest.raises(RuntimeError, match="start"):
        run(main())
