"""Dynamic batching of encoder calls (engine_adapters/batching.py): coalescing, order,
calls larger than a batch, cancellation while queued, failures kept to their batch."""

from __future__ import annotations

import asyncio
import threading

import pytest

from engine_adapters.batching import DynamicBatcher


class Model:
    """A blocking `fn(batch)` that records its batches; items starting with "boom" fail
    their batch; it can be held until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, batch: list[str]) -> list[str]:
        self.release.wait(10)
        self.batches.append(list(batch))
        if any(item.startswith("boom") for item in batch):
            raise ValueError("the model failed this batch")
        return [item.upper() for item in batch]


def test_concurrent_calls_share_one_batch_and_keep_their_order():
    async def go() -> None:
        model = Model()
        batcher = DynamicBatcher(model, max_batch_size=16, max_wait=0.2, gap=0.05)
        results = await asyncio.gather(*(batcher.submit([f"a{i}", f"b{i}"]) for i in range(4)))
        assert results == [[f"A{i}", f"B{i}"] for i in range(4)]
        assert len(model.batches) == 1 and len(model.batches[0]) == 8
        assert batcher.batch_sizes == [8]
        await batcher.close()

    asyncio.run(go())


def test_a_call_larger_than_a_batch_spans_several_in_order():
    async def go() -> None:
        model = Model()
        batcher = DynamicBatcher(model, max_batch_size=4, max_wait=0.01)
        items = [f"x{i}" for i in range(10)]
        assert await batcher.submit(items) == [i.upper() for i in items]
        assert [len(b) for b in model.batches] == [4, 4, 2]
        assert batcher.waiting == 0 and batcher.running == 0
        await batcher.close()

    asyncio.run(go())


def test_a_call_cancelled_while_queued_never_reaches_the_model():
    async def go() -> None:
        model = Model()
        model.release.clear()  # the first batch holds the model
        batcher = DynamicBatcher(model, max_batch_size=2, max_wait=0.01)
        first = asyncio.ensure_future(batcher.submit(["one", "two"]))
        await asyncio.sleep(0.05)  # the first batch runs (held)
        gone = asyncio.ensure_future(batcher.submit(["gone"]))
        kept = asyncio.ensure_future(batcher.submit(["kept"]))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client left while its input waited in the queue
        model.release.set()
        assert await first == ["ONE", "TWO"]
        assert await kept == ["KEPT"]
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert all("gone" not in batch for batch in model.batches)
        assert batcher.waiting == 0
        await batcher.close()

    asyncio.run(go())


def test_a_failing_batch_fails_only_its_own_callers():
    async def go() -> None:
        model = Model()
        batcher = DynamicBatcher(model, max_batch_size=2, max_wait=0.01)
        with pytest.raises(ValueError, match="failed this batch"):
            await batcher.submit(["boom", "fine"])
        # the worker goes on: the next call is served
        assert await batcher.submit(["later"]) == ["LATER"]
        # a call spanning batches fails as soon as one of its batches fails, and its rest
        # is not run
        model.batches.clear()
        with pytest.raises(ValueError):
            await batcher.submit(["boom1", "b", "c", "d"])
        assert model.batches == [["boom1", "b"]]
        assert await batcher.submit(["e"]) == ["E"]
        await batcher.close()

    asyncio.run(go())


def test_a_model_that_returns_too_few_outputs_is_an_error_not_a_hang():
    async def go() -> None:
        batcher: DynamicBatcher[str, str] = DynamicBatcher(lambda batch: batch[:-1], max_batch_size=4, max_wait=0.01)
        with pytest.raises(RuntimeError, match="1 outputs for 2 inputs"):
            await asyncio.wait_for(batcher.submit(["a", "b"]), 5)
        await batcher.close()

    asyncio.run(go())


def test_closing_fails_the_waiting_callers():
    async def go() -> None:
        model = Model()
        model.release.clear()
        batcher = DynamicBatcher(model, max_batch_size=1, max_wait=0.01)
        running = asyncio.ensure_future(batcher.submit(["running"]))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(batcher.submit(["waiting"]))
        await asyncio.sleep(0.01)
        await batcher.close()
        model.release.set()
        with pytest.raises(RuntimeError, match="unloaded"):
            await waiting
        running.cancel()

    asyncio.run(go())
